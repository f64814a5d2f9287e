"""Typed experiment configuration.

A config is a tree of dataclasses loaded from YAML and patched with
``--set a.b=value`` overrides. Every key is checked against the dataclass
fields, so a typo ends the run with one message naming the bad key (and the
closest valid one) before any rank does work.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user error in the experiment description: reported without traceback."""


@dataclass
class ModelConfig:
    # "minilm" is the packaged all-MiniLM-L6-v2; "tiny-bert" a small random BERT
    # for tests; anything else is a local path or a Hugging Face hub id.
    name: str = "minilm"
    max_length: int = 64
    # Random-init overrides for tiny test models (ignored for pre-trained ones).
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    # Image models: side length the images are resized to.
    image_size: int = 28


@dataclass
class DataConfig:
    # "embedded" is the synthetic task shipped in the package; otherwise a name
    # of ../shared/data (with data.path) or a local folder / hub dataset name.
    name: str = "embedded"
    path: str | None = None
    train_split: str = "train"
    test_split: str | None = None  # default: test, else dev, else validation
    partition: str = "iid"  # iid | dirichlet | shards | quantity
    alpha: float = 0.5  # Dirichlet concentration (label skew) / quantity skew
    shards_per_client: int = 2
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    text_column: str | None = None
    label_column: str = "label"


@dataclass
class FederationConfig:
    num_clients: int = 10
    clients_per_round: int = 4
    rounds: int = 5
    eval_every: int = 1
    dropout: float = 0.0  # probability a sampled client fails the round
    deadline_s: float | None = None  # emulated round deadline: slower clients dropped
    over_selection: float = 1.0  # sample ceil(k * this), keep the first k to finish
    # float64 accumulation makes the average independent of how clients are
    # packed into ranks (identical results on 3 or 9 ranks); float32 halves
    # the bytes moved by the collective.
    aggregation_dtype: str = "float64"


@dataclass
class MethodConfig:
    name: str = "full"  # full | lora | federa | prompt | adapter | bitfit | head
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    num_virtual_tokens: int = 20
    adapter_size: int = 64
    train_head: bool = True
    pissa_niter: int | None = None  # FeDeRA: fast randomised SVD iterations


@dataclass
class TrainConfig:
    local_steps: int = 5
    batch_size: int = 16
    lr: float = 5e-5
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.0
    eval_batch_size: int = 128


@dataclass
class NetworkConfig:
    clock: str = "virtual"  # virtual | realtime
    profile: str | None = None  # preset: mobile | wifi | datacenter (overrides the three below)
    up_mbps: float = 10.0
    down_mbps: float = 50.0
    latency_ms: float = 20.0
    # Heterogeneity: each client's bandwidths are scaled by a lognormal factor
    # with this sigma (0 = homogeneous), or read from a CSV trace with columns
    # client,up_mbps,down_mbps[,latency_ms].
    heterogeneity: float = 0.0
    trace: str | None = None


@dataclass
class ComputeConfig:
    client_gflops: float = 50.0  # emulated client device speed, GFLOP/s
    server_gflops: float = 5000.0
    heterogeneity: float = 0.0  # lognormal sigma of client speed


@dataclass
class AttackConfig:
    malicious_fraction: float = 0.0
    poison_rate: float = 0.5
    trigger: str = "cf"
    trigger_position: int = 0  # token position where the trigger word goes; -1 = end
    target_label: int = 0


@dataclass
class RuntimeConfig:
    backend: str = "auto"  # auto | gloo | nccl
    timeout_s: float = 300.0  # collective timeout: backstop if a launcher fails to end the job
    threads: int | None = None  # torch threads per rank (default: cores / local ranks)


@dataclass
class OutputConfig:
    dir: str = "runs"
    progress: bool = True
    checkpoint: bool = True


@dataclass
class ExperimentConfig:
    name: str = "quickstart"
    seed: int = 0
    algorithm: str = "fedavg"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # Free-form options of one algorithm (split points, pruning ratio, ...),
    # checked by that algorithm.
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ALGORITHMS = ("fedavg", "splitfed", "sfprompt", "fedpft")
METHODS = ("full", "lora", "federa", "prompt", "adapter", "bitfit", "head")
PARTITIONS = ("iid", "dirichlet", "shards", "quantity")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {value!r}") from None
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            kwargs[key] = _build(hint_t, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint_t, f"{prefix}{key}")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), raw))
    return pairs


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load YAML (or defaults when path is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    for key, raw in parse_overrides(overrides):
        _set_dotted(tree, key, raw)
    cfg = _build(ExperimentConfig, tree, "")
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, tree, "")
    validate(cfg)
    return cfg


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {key} '{value}'{hint}; choose one of: {', '.join(allowed)}")


def validate(cfg: ExperimentConfig) -> None:
    """Checks that need no data or ranks. Data-dependent checks live in data/."""
    from fedmpi.net.profiles import PRESETS

    _choice(cfg.algorithm, ALGORITHMS, "algorithm")
    _choice(cfg.method.name, METHODS, "method.name")
    _choice(cfg.data.partition, PARTITIONS, "data.partition")
    _choice(cfg.network.clock, ("virtual", "realtime"), "network.clock")
    _choice(cfg.runtime.backend, ("auto", "gloo", "nccl"), "runtime.backend")
    _choice(cfg.train.optimizer, ("adamw", "sgd"), "train.optimizer")
    _choice(cfg.federation.aggregation_dtype, ("float64", "float32"), "federation.aggregation_dtype")
    if cfg.network.profile is not None:
        _choice(cfg.network.profile, tuple(PRESETS), "network.profile")
    fed = cfg.federation
    positive = {
        "federation.num_clients": fed.num_clients,
        "federation.clients_per_round": fed.clients_per_round,
        "federation.rounds": fed.rounds,
        "federation.eval_every": fed.eval_every,
        "train.local_steps": cfg.train.local_steps,
        "train.batch_size": cfg.train.batch_size,
        "train.lr": cfg.train.lr,
        "network.up_mbps": cfg.network.up_mbps,
        "network.down_mbps": cfg.network.down_mbps,
        "compute.client_gflops": cfg.compute.client_gflops,
        "compute.server_gflops": cfg.compute.server_gflops,
        "runtime.timeout_s": cfg.runtime.timeout_s,
        "model.max_length": cfg.model.max_length,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if cfg.network.latency_ms < 0:
        raise ConfigError(f"network.latency_ms must be >= 0, got {cfg.network.latency_ms}")
    if fed.clients_per_round > fed.num_clients:
        raise ConfigError(
            f"federation.clients_per_round ({fed.clients_per_round}) > federation.num_clients ({fed.num_clients})"
        )
    if not 0.0 <= fed.dropout < 1.0:
        raise ConfigError(f"federation.dropout must be in [0, 1), got {fed.dropout}")
    if fed.over_selection < 1.0:
        raise ConfigError(f"federation.over_selection must be >= 1, got {fed.over_selection}")
    if cfg.data.partition == "dirichlet" and cfg.data.alpha <= 0:
        raise ConfigError(f"data.alpha must be > 0 for dirichlet, got {cfg.data.alpha}")
    if not 0.0 <= cfg.attack.malicious_fraction <= 1.0:
        raise ConfigError("attack.malicious_fraction must be in [0, 1]")
    if not 0.0 <= cfg.attack.poison_rate <= 1.0:
        raise ConfigError("attack.poison_rate must be in [0, 1]")
    if cfg.network.trace is not None and not Path(cfg.network.trace).is_file():
        raise ConfigError(f"network.trace file not found: {cfg.network.trace}")


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
