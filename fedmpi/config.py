"""The experiment description: a tree of typed sections read from YAML and ``--set``.

Every key is declared once, with its type, default, range and whether it may
change on ``--resume`` (fedmpi.options). Sections whose keys depend on a
choice — the method, the algorithm's ``options``, a codec, a strategy — take
their dataclass from the chosen registry entry, so a typo or an out-of-range
value ends the run with one message naming the key before any rank starts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedmpi.errors import ConfigError
from fedmpi.options import at_least, build, build_choice, in_range, option, positive, resumable
from fedmpi.registry import (AGGREGATORS, ALGORITHMS, CLIENT_STRATEGIES, CODECS, METHODS, PARTITIONS, PRIVACY,
                             SERVER_STRATEGIES, TASKS)

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "config_from_dict", "dump_config"]


@dataclass
class ModelConfig:
    # "minilm" is the packaged all-MiniLM-L6-v2; "tiny-bert" a small random BERT
    # for tests; anything else is a local path or a Hugging Face hub id.
    name: str = option("minilm")
    max_length: int = option(64, check=positive)
    # Random-init overrides for tiny test models (ignored for pre-trained ones).
    hidden_size: int = option(32, check=positive)
    num_layers: int = option(2, check=positive)
    num_heads: int = option(2, check=positive)
    intermediate_size: int = option(64, check=positive)
    image_size: int = option(28, check=positive, help="image models: side length images are resized to")
    pooling: str = option("auto", choices=("auto", "cls", "mean"),
                          help="what the classifier reads: the class token, the mean of the token rows "
                               "(prompt and pad rows excluded), or auto: the architecture's own head "
                               "(BERT/ViT: class token, CLIP: patch mean); see models/prompting.py")


@dataclass
class DataConfig:
    # "embedded" is the synthetic task shipped in the package; otherwise a name
    # of ../shared/data (with data.path) or a local folder / hub dataset name.
    name: str = option("embedded")
    path: str | None = option(None)
    train_split: str = option("train")
    test_split: str | None = option(None, help="default: test, else dev, else validation")
    partition: str = option("iid", choices=PARTITIONS)
    alpha: float = option(0.5, check=positive, help="Dirichlet concentration / quantity skew")
    shards_per_client: int = option(2, check=positive)
    max_train_samples: int | None = option(None, check=positive)
    max_test_samples: int | None = option(None, check=positive)
    text_column: str | None = option(None)
    label_column: str = option("label")
    # Hyperparameters are chosen on a validation split carved from the training data, never on the test set.
    validation_fraction: float = option(0.0, check=in_range(0, 1, high_open=True),
                                        help="share of the training data held out (seeded); 0: none")
    evaluate: str = option("test", choices=("test", "validation"),
                           help="score the global model on the test split or on the held-out validation split")
    # The local-only baseline (FedTune's 'federated beats local training'): one client of a
    # federation trains alone on exactly the part that federation would give it.
    only_client: int | None = option(None, check=at_least(0),
                                     help="train on this client's part alone (with federation.num_clients 1)")
    partition_clients: int | None = option(None, check=positive,
                                           help="with data.only_client: the size of the federation whose "
                                                "partition (same seed, scheme, alpha) is reproduced")

    def validate(self) -> None:
        if self.evaluate == "validation" and self.validation_fraction <= 0:
            raise ConfigError("data.evaluate: validation needs data.validation_fraction > 0")
        if (self.only_client is None) != (self.partition_clients is None):
            raise ConfigError("data.only_client and data.partition_clients go together: the client, and the "
                              "federation whose partition it is taken from")
        if self.only_client is not None and self.only_client >= self.partition_clients:
            raise ConfigError(f"data.only_client {self.only_client} is not a client of a federation of "
                              f"data.partition_clients {self.partition_clients} (0..{self.partition_clients - 1})")


@dataclass
class FederationConfig:
    num_clients: int = option(10, check=positive)
    clients_per_round: int = option(4, check=positive)
    rounds: int = option(5, check=positive, resume=True)
    eval_every: int = option(1, check=positive, resume=True)
    dropout: float = option(0.0, check=in_range(0, 1, high_open=True), help="P(a sampled client fails the round)")
    deadline_s: float | None = option(None, check=positive, help="emulated round deadline: slower clients dropped")
    over_selection: float = option(1.0, check=at_least(1.0), help="sample ceil(k * this), keep the first k")
    sampling: str = option("without_replacement", choices=("without_replacement", "poisson"),
                           help="clients_per_round drawn each round, or each client with p = k/N (DP's Poisson)")
    # float64 accumulation makes the average independent of how clients are
    # packed into ranks (identical results on 3 or 9 ranks); float32 halves
    # the bytes moved by the collective.
    aggregation_dtype: str = option("float64", choices=("float64", "float32"))


@dataclass
class TrainConfig:
    local_steps: int = option(5, check=positive)
    batch_size: int = option(16, check=positive)
    lr: float = option(5e-5, check=positive)
    optimizer: str = option("adamw", choices=("adamw", "sgd"))
    weight_decay: float = option(0.0, check=at_least(0))
    eval_batch_size: int = option(128, check=positive)


@dataclass
class NetworkConfig:
    clock: str = option("virtual", choices=("virtual", "realtime"))
    # A preset (mobile | wifi | datacenter) fills the figures not given here;
    # explicit figures always win. Without either: 10 / 50 Mbit/s, 20 ms.
    profile: str | None = option(None, choices=lambda: _presets())
    up_mbps: float | None = option(None, check=positive)
    down_mbps: float | None = option(None, check=positive)
    latency_ms: float | None = option(None, check=at_least(0))
    # Heterogeneity: each client's bandwidths are scaled by a lognormal factor
    # with this sigma (0 = homogeneous), or read from a CSV trace with columns
    # client,up_mbps,down_mbps[,latency_ms].
    heterogeneity: float = option(0.0, check=at_least(0))
    trace: str | None = option(None)
    # The server's own link, shared max-min fairly by the clients transferring at once
    # (net/fairshare.py); unlimited by default.
    server_up_mbps: float | None = option(None, check=positive, help="server uplink: every download leaves here")
    server_down_mbps: float | None = option(None, check=positive, help="server downlink: every upload lands here")

    def validate(self) -> None:
        from fedmpi.net.profiles import read_trace, resolve_base

        base = resolve_base(self.profile, self.up_mbps, self.down_mbps, self.latency_ms)
        # What config.yaml records is what the run used.
        self.up_mbps, self.down_mbps, self.latency_ms = base.up_mbps, base.down_mbps, base.latency_ms
        if self.trace is not None:
            if not Path(self.trace).is_file():
                raise ConfigError(f"network.trace file not found: {self.trace}")
            read_trace(Path(self.trace), base)  # every row checked now, not after the ranks start


def _presets() -> tuple[str, ...]:
    from fedmpi.net.profiles import PRESETS

    return tuple(PRESETS)


@dataclass
class ComputeConfig:
    client_gflops: float = option(50.0, check=positive, help="emulated client device speed, GFLOP/s")
    server_gflops: float = option(5000.0, check=positive)
    heterogeneity: float = option(0.0, check=at_least(0), help="lognormal sigma of client speed")
    client_memory_mb: float | None = option(None, check=positive,
                                            help="client device memory: a run whose clients need more to train "
                                                 "(weights, gradients, optimizer, activations) is refused")


@dataclass
class AttackConfig:
    malicious_fraction: float = option(0.0, check=in_range(0, 1))
    poison_rate: float = option(0.5, check=in_range(0, 1))
    trigger: str = option("cf")
    trigger_position: int = option(0, help="token position where the trigger word goes; -1 = end")
    target_label: int = option(0, check=at_least(0))
    min_malicious_per_round: int = option(0, check=at_least(0),
                                          help="guarantee this many malicious clients in every round's sample")


@dataclass
class TransportConfig:
    """How messages are encoded (the ledger charges encoded bytes): per direction, and
    per message kind (`kinds: {activations: fp16}` applies to that kind both ways)."""
    up: Any = option(default_factory=lambda: _codec_default(), select=CODECS)
    down: Any = option(default_factory=lambda: _codec_default(), select=CODECS)
    kinds: dict[str, Any] = option(default_factory=dict, help="message kind -> codec, overriding up/down")
    down_delta: bool = option(False, help="send clients that hold the last round's model the encoded "
                                          "difference; the others get the current model whole (fp32)")

    def validate(self) -> None:
        """Each codec section built and checked across its keys (topk's fraction vs k), named by
        its dotted key; error feedback only where a client can carry a residual (its uploads)."""
        self.kinds = {str(kind): build_choice(CODECS, "fp32", spec, f"transport.kinds.{kind}")
                      for kind, spec in self.kinds.items()}
        sections = [("transport.up.", self.up), ("transport.down.", self.down)] + [
            (f"transport.kinds.{k}.", v) for k, v in self.kinds.items()]
        for prefix, opts in sections:
            check = getattr(opts, "validate_at", None)
            if callable(check):
                check(prefix)
            feedback = getattr(opts, "error_feedback", False)
            if feedback and (prefix == "transport.down." or (prefix.startswith("transport.kinds.")
                                                             and prefix.split(".")[2] not in ("update", "control"))):
                raise ConfigError(f"{prefix}error_feedback carries a client's residual to its next upload of "
                                  f"the same message: it applies to transport.up (updates, control variates) only")
        if self.down_delta and self.down.name == "fp32":
            raise ConfigError("transport.down_delta sends encoded differences: choose a lossy transport.down "
                              "codec too (with fp32 the difference costs what the model costs)")


def _codec_default() -> Any:
    return CODECS.get("fp32").Options()


def _entry_default(registry: Any, name: str) -> Any:
    return lambda: registry.get(name).Options()


@dataclass
class StrategyConfig:
    """How client updates become the next global state (fedmpi/strategies), in four parts.
    Order of operations each round: clip -> encode/decode (+ error feedback) ->
    aggregate -> noise -> server optimiser."""
    server: Any = option(default_factory=_entry_default(SERVER_STRATEGIES, "fedavg"), select=SERVER_STRATEGIES,
                         help="server optimiser on the aggregate")
    client: Any = option(default_factory=_entry_default(CLIENT_STRATEGIES, "none"), select=CLIENT_STRATEGIES,
                         help="hooks around local training (FedProx, SCAFFOLD)")
    aggregator: Any = option(default_factory=_entry_default(AGGREGATORS, "mean"), select=AGGREGATORS,
                             help="how the arrived updates are combined")
    privacy: Any = option(default_factory=_entry_default(PRIVACY, "none"), select=PRIVACY,
                          help="differential privacy of the aggregate")


def check_strategies(cfg: Any) -> None:
    """Checks across sections for `strategy` (each part's own `check`, and their combinations)."""
    s = cfg.strategy
    SERVER_STRATEGIES.get(s.server.name).check(cfg)
    CLIENT_STRATEGIES.get(s.client.name).check(cfg)
    AGGREGATORS.get(s.aggregator.name).check(cfg)
    PRIVACY.get(s.privacy.name).check(cfg)
    algorithm = ALGORITHMS.get(cfg.algorithm)
    if s.client.name != "none" and not getattr(algorithm, "trains_with_hooks", True):
        raise ConfigError(f"strategy.client.name {s.client.name} changes each local step; algorithm "
                          f"'{cfg.algorithm}' trains through split-learning steps that do not call it: "
                          f"use strategy.client.name none")
    if s.privacy.name == "dp" and not getattr(algorithm, "trains_with_hooks", True):
        raise ConfigError(f"strategy.privacy.name dp protects the model update only; algorithm "
                          f"'{cfg.algorithm}' also sends activations and gradients that it cannot protect")
    if cfg.federation.sampling == "poisson" and cfg.federation.over_selection > 1:
        raise ConfigError("federation.sampling poisson draws each client independently; "
                          "federation.over_selection must stay 1")
    if s.client.name == "scaffold" and s.aggregator.name not in ("mean", "norm_clip"):
        raise ConfigError(f"strategy.client.name scaffold averages its control variates over every arrived "
                          f"client; strategy.aggregator.name {s.aggregator.name} would drop or reshape "
                          f"updates without their variates: use strategy.aggregator.name mean")


@dataclass
class StateConfig:
    """Per-client state kept between rounds (codec residuals, control variates)."""
    memory_mb: float = option(256.0, check=positive, resume=True, help="in memory on the server; the rest spills")


@dataclass
class RuntimeConfig:
    backend: str = option("auto", choices=("auto", "gloo", "nccl"),
                          help="auto: NCCL when every rank has a GPU of its own, else gloo (CPU staging)")
    device: str = option("auto", choices=("auto", "cpu", "cuda"),
                         help="compute device: auto = a GPU when visible (see fedmpi.runtime.placement)")
    timeout_s: float = option(300.0, check=positive, resume=True,
                              help="collective timeout: backstop if a launcher fails to end the job")
    threads: int | None = option(None, check=positive, resume=True,
                                 help="torch threads per rank (default: cores / local ranks)")
    assignment: str = option("balanced", choices=("balanced", "round_robin"), resume=True,
                            help="which rank hosts a sampled client: balanced by expected work each "
                                 "round, or fixed by id (results are the same either way)")
    overlap_evaluation: bool = option(True, resume=True,
                                      help="the server evaluates round r while clients train round r+1, where "
                                           "the algorithm allows (results are the same either way)")


@dataclass
class OutputConfig:
    dir: str = option("runs")
    progress: bool = option(True, resume=True)
    checkpoint: bool = option(True, resume=True)
    tracker: str | None = option(None, choices=("tensorboard", "mlflow"), resume=True,
                                 help="also log metrics to TensorBoard event files or MLflow, in the run folder")


def _method_default() -> Any:
    return METHODS.get("full").Options()


@dataclass
class ExperimentConfig:
    name: str = option("quickstart")
    seed: int = option(0)
    algorithm: str = option("fedavg")
    task: str = option("classification")
    model: ModelConfig = option(default_factory=ModelConfig)
    data: DataConfig = option(default_factory=DataConfig)
    federation: FederationConfig = option(default_factory=FederationConfig)
    method: Any = option(default_factory=_method_default, select=METHODS)
    train: TrainConfig = option(default_factory=TrainConfig)
    network: NetworkConfig = option(default_factory=NetworkConfig)
    compute: ComputeConfig = option(default_factory=ComputeConfig)
    attack: AttackConfig = option(default_factory=AttackConfig)
    transport: TransportConfig = option(default_factory=TransportConfig)
    strategy: StrategyConfig = option(default_factory=StrategyConfig)
    state: StateConfig = option(default_factory=StateConfig)
    runtime: RuntimeConfig = option(default_factory=RuntimeConfig)
    output: OutputConfig = option(default_factory=OutputConfig)
    # The algorithm's own knobs (split points, pruning ratio, ...), typed by its Options.
    options: Any = option(default_factory=dict, select=ALGORITHMS, select_by="algorithm")
    # The task's own knobs (prompt format, verbalisers, ...), typed by its Options.
    task_options: Any = option(default_factory=dict, select=TASKS, select_by="task")

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Checks across sections; single keys check themselves."""
        fed = self.federation
        if fed.clients_per_round > fed.num_clients:
            raise ConfigError(f"federation.clients_per_round ({fed.clients_per_round}) > "
                              f"federation.num_clients ({fed.num_clients})")
        if self.data.only_client is not None and fed.num_clients != 1:
            raise ConfigError(f"data.only_client trains one client alone: set federation.num_clients 1 "
                              f"(it is {fed.num_clients})")
        TASKS.get(self.task).check(self)
        ALGORITHMS.get(self.algorithm).check(self)
        METHODS.get(self.method.name).check(self)
        check_strategies(self)


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, str) and part in ("up", "down"):  # `transport.up: int8` then --set transport.up.k=...
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {dotted}={raw}: not a valid YAML value") from None


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}'")
        pairs.append((key.strip(), raw))
    return pairs


def read_tree(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML file with ``--set`` overrides applied."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(exc).split())}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not a text file") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must be a mapping of sections, got {type(tree).__name__}")
    for key, raw in parse_overrides(overrides):
        _set_dotted(tree, key, raw)
    return tree


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load YAML (or defaults when path is None), apply overrides, validate."""
    return config_from_dict(read_tree(path, overrides))


def config_from_dict(tree: dict[str, Any]) -> ExperimentConfig:
    return build(ExperimentConfig, tree, "")


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def dotted_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config tree as {"section.key": value} (empty sections kept as values): what resume
    checks and trackers compare and log key by key."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(dotted_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Keys whose values differ between a run and its resumption, other than those
    declared resumable: each one would make the resumed run a different experiment."""
    allowed = resumable(new)
    a, b = dotted_keys(old.to_dict()), dotted_keys(new.to_dict())

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return x == y

    return sorted(k for k in set(a) | set(b) if k not in allowed and not same(a.get(k), b.get(k)))
