"""The artifact users save and share: energy models of the chosen layers (safetensors) plus a JSON
config (layers, thresholds, input statistics, steering settings, training summary, metrics, the
LLM's fingerprint, versions). Loading checks integrity; using it checks the fingerprint. No pickle."""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .energy import EnergyMLP, FrozenEnergy, FrozenHeads
from .io import sha256_file, versions
from .models import Fingerprint, LoadedModel, ModelError
from .probe import HarmProbe, check_same_tokenizer

FORMAT = "eds.bundle/1"
#: written for bundles whose gate pools the prompt (not the last token): an eds that cannot pool refuses
#: them instead of gating on the wrong state. Loaded alike.
FORMAT_POOLED = "eds.bundle/2"
#: written for bundles whose gate reads another model's states (a gate model): an eds without gate
#: models refuses them instead of running the probe on the steered model's states
FORMAT_GATE_MODEL = "eds.bundle/3"
FORMATS = (FORMAT, FORMAT_POOLED, FORMAT_GATE_MODEL)
WEIGHTS, CONFIG = "energy.safetensors", "bundle.json"
MODES = ("always", "gated", "gated-entry")
POSITIONS = ("prompt", "all")


#: the gate model last used, by (name, dtype, device): bundles loaded apart (a tune's, then an eval's)
#: share one copy of it instead of each loading its own (one entry: a process steers with one at a time)
_GATE_MODELS: dict[tuple[str, str, str], LoadedModel] = {}


class BundleError(ValueError):
    """A bundle is damaged, malformed, or made for another model."""


class GateModelUnavailable(BundleError):
    """A bundle's gate model cannot be loaded by the name it records (moved, or not on this machine)."""


def load_gate_model(name: str, lm: LoadedModel) -> LoadedModel:
    """`name` loaded as a gate model beside the steered model `lm` (in its dtype, on its device), or the
    copy of it this process already holds."""
    key = (name, lm.dtype_name, str(lm.device))
    if key not in _GATE_MODELS:
        from .models import load_model

        model = load_model(name, dtype=lm.dtype_name, device=str(lm.device))
        _GATE_MODELS.clear()
        _GATE_MODELS[key] = model
    return _GATE_MODELS[key]


@dataclass
class SteerSettings:
    """How to steer: `eta` is the step length relative to ‖h‖ at each position; `positions` is
    `prompt` (the last prompt token only), `all` (it and every generated token) or an int n (it and
    the first n generated tokens). `mode`: `always`; `gated` (a state moves on each step only while
    its energy is above the layer's threshold, so it stops at the boundary); `gated-entry` (a state
    above the threshold when steering starts takes every step, one below it is left alone)."""

    eta: float = 0.05
    steps: int = 3
    mode: str = "always"
    positions: str | int = "all"
    harm_gate: bool = True  # use the bundle's harmfulness gate, if it has one
    route: bool = False  # rows the gate flags are steered toward refusal (refuse models) instead of left alone

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BundleError(f"mode must be one of {MODES}, not {self.mode!r}")
        count = isinstance(self.positions, int) and not isinstance(self.positions, bool)
        if not (self.positions in POSITIONS or (count and self.positions >= 0)):
            raise BundleError(f"positions must be one of {POSITIONS} or a count >= 0, not {self.positions!r}")
        if self.steps < 0 or self.eta < 0:
            raise BundleError("steps and eta must be >= 0")


@dataclass
class EnergyBundle:
    fingerprint: Fingerprint
    models: dict[int, EnergyMLP]
    thresholds: dict[int, float]
    steering: SteerSettings = field(default_factory=SteerSettings)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    train_config: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    gate: HarmProbe | None = None  # harmfulness probe: sequences above gate_threshold are never steered
    gate_layer: int | None = None
    gate_threshold: float | None = None
    gate_metrics: dict[str, Any] = field(default_factory=dict)
    # with routing, rows whose gate logit is above this go toward refusal; rows between gate_threshold
    # and it are left alone (a three-way gate). None: the same as gate_threshold (two-way).
    route_threshold: float | None = None
    # energy models for the rows the gate flags, trained on harmful prompts only (low energy = refused)
    refuse_models: dict[int, EnergyMLP] = field(default_factory=dict)
    refuse_thresholds: dict[int, float] = field(default_factory=dict)
    refuse_metrics: list[dict[str, Any]] = field(default_factory=list)
    # the gate model: whose states the gate reads (None: the steered model's own, at gate_layer). Its
    # gate_layer is then that model's layer, run on the steered model's prompt ids before generation
    gate_reader: Fingerprint | None = None
    # that model once loaded (`gate_model_for`), kept across `replace` copies (subset, with_gate_recall)
    gate_model: LoadedModel | None = field(default=None, repr=False, compare=False)
    _device_cache: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def frozen(self, layer: int, device: torch.device | str, *, refuse: bool = False) -> FrozenEnergy:
        """The layer's energy model (or its refuse model) prepared for steering on `device`, built once
        per device. The bundle's own models stay where they are."""
        key = (f"{'refuse' if refuse else 'layer'}{layer}", str(device))
        if key not in self._device_cache:
            self._device_cache[key] = FrozenEnergy((self.refuse_models if refuse else self.models)[layer]).to(device)
        return self._device_cache[key]

    def frozen_heads(self, layer: int, device: torch.device | str) -> FrozenHeads:
        """The layer's energy model and refuse model as one stacked network (heads 0 and 1) on `device`."""
        key = (f"heads{layer}", str(device))
        if key not in self._device_cache:
            self._device_cache[key] = FrozenHeads([self.models[layer], self.refuse_models[layer]]).to(device)
        return self._device_cache[key]

    def set_refuse(self, result: Any) -> None:
        """Add refuse models for this bundle's layers from a TrainResult on harmful prompts only."""
        missing = [layer for layer in self.layers if layer not in result.models]
        if missing:
            raise BundleError(f"refuse models were not trained for layers {missing}")
        thresholds = {r.layer: r.threshold for r in result.results}
        self.refuse_models = {layer: result.models[layer] for layer in self.layers}
        self.refuse_thresholds = {layer: thresholds[layer] for layer in self.layers}
        self.refuse_metrics = result.table()
        self._device_cache = {k: v for k, v in self._device_cache.items() if not k[0].startswith(("refuse", "heads"))}

    def gate_on(self, device: torch.device | str) -> HarmProbe | None:
        if self.gate is None:
            return None
        key = ("gate", str(device))
        if key not in self._device_cache:
            self._device_cache[key] = copy.deepcopy(self.gate).to(device).eval()
        return self._device_cache[key]

    def gate_model_for(self, lm: LoadedModel | None, gate_model: LoadedModel | None = None) -> LoadedModel:
        """The gate model this bundle's gate reads, checked against the steered model `lm`: `gate_model`
        if given, else the one used before (if in `lm`'s dtype and on its device), else loaded now by the
        name it was trained with (a built-in, hub id or folder) in `lm`'s dtype and on its device. The
        model used is kept on the bundle and, one at a time, for other bundles of this process."""
        if self.gate_reader is None:
            raise BundleError("this bundle's gate reads the steered model's own states: it has no gate model")
        name = self.gate_reader.name
        model = gate_model
        if model is None and lm is not None:
            want = (lm.dtype_name, str(lm.device))
            kept = self.gate_model if self.gate_model is not None else _GATE_MODELS.get((name, *want))
            model = kept if kept is not None and (kept.dtype_name, str(kept.device)) == want else None
        elif model is None:
            model = self.gate_model
        if model is None:
            if lm is None or not name:
                raise BundleError(
                    f"this bundle's gate reads {name or 'another model'}'s states: load it and pass it as gate_model"
                )
            try:
                model = load_gate_model(name, lm)
            except ModelError as e:
                raise GateModelUnavailable(
                    f"this bundle's gate reads the states of its gate model {name!r}, which cannot be loaded by "
                    f"that name here ({e}); load it yourself and pass it as gate_model"
                ) from None
        bad = self.gate_reader.mismatches(model.fingerprint)
        if bad:
            raise BundleError(
                f"this bundle's gate was trained on {name or 'another model'}'s states and does not fit "
                f"{model.fingerprint.name or 'the gate model given'}: " + "; ".join(bad)
            )
        if lm is not None:
            try:
                check_same_tokenizer(model, lm)
            except ValueError as e:
                raise BundleError(str(e)) from None
        self.gate_model = model
        _GATE_MODELS.clear()
        _GATE_MODELS[(model.name, model.dtype_name, str(model.device))] = model
        return model

    def prepare_gate_model(self, lm: LoadedModel, name: str | None = None) -> LoadedModel | None:
        """Load now the gate model steering will run beside the steered model `lm`, so that one that no
        longer loads fails before any generation: by `name` (e.g. the folder it was moved to) if given,
        else by the name the bundle records; checked as `gate_model_for` checks any gate model and kept
        as it keeps one. None when the gate is off or reads `lm` itself."""
        if name:
            if self.gate_reader is None:
                raise BundleError("this bundle has no gate model to replace (a gate, if any, reads the steered model)")
            try:
                model = load_gate_model(name, lm)
            except ModelError as e:
                raise BundleError(f"the gate model {name!r} cannot be loaded ({e})") from None
            return self.gate_model_for(lm, model)
        if self.gate_reader is None or not self.steering.harm_gate:
            return None
        return self.gate_model_for(lm)

    def set_gate(
        self,
        probe: HarmProbe,
        layer: int,
        threshold: float,
        metrics: dict[str, Any] | None = None,
        reader: Fingerprint | None = None,
    ) -> None:
        """Set the harmfulness gate: `probe` reads the states entering `layer` of the steered model, or
        of the gate model `reader` (a model of the same vocabulary, run on the prompt before steering)."""
        if reader is not None and not 0 <= layer < reader.num_layers:
            raise BundleError(f"gate layer {layer} is not in the gate model's 0..{reader.num_layers - 1}")
        if reader is None and self.models and layer > min(self.models):
            raise BundleError(
                f"the gate layer ({layer}) must not come after the first steered layer "
                f"({min(self.models)}): it has to decide before any state is moved"
            )
        self.gate, self.gate_layer, self.gate_threshold = probe.eval().requires_grad_(False), layer, threshold
        self.gate_metrics = metrics or {}
        if reader != self.gate_reader:
            self.gate_model = None
        self.gate_reader = reader
        self.route_threshold = None  # a new gate: any three-way threshold belonged to the old one
        self._device_cache = {k: v for k, v in self._device_cache.items() if k[0] != "gate"}

    def digest(self) -> str:
        """A hash of what decides how this bundle steers: weights, thresholds, gate and its saved default
        settings (so a bundle that `eds tune` saved into has a new digest, and records made before are
        not mixed with those made after)."""
        import hashlib

        h = hashlib.sha256()
        parts = [(f"layer.{layer}", m) for layer, m in sorted(self.models.items())]
        parts += [("gate", self.gate)] if self.gate is not None else []
        parts += [(f"refuse.{layer}", m) for layer, m in sorted(self.refuse_models.items())]
        for prefix, module in parts:
            for k, v in sorted(module.state_dict().items()):
                h.update(f"{prefix}.{k}".encode())
                h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        meta = {
            "thresholds": self.thresholds,
            "gate": [self.gate_layer, self.gate_threshold],
            "steering": asdict(self.steering),
        }
        if self.gate is not None and self.gate.pool != "last":  # only then, so older bundles keep their digest
            meta["gate_pool"] = self.gate.pool
        if self.gate is not None and self.gate.span is not None:
            meta["gate_span"] = list(self.gate.span)
        if self.gate_reader is not None:
            meta["gate_reader"] = self.gate_reader.to_dict()
        if self.route_threshold is not None:  # only then, so two-way bundles keep their digest
            meta["route_threshold"] = self.route_threshold
        if self.refuse_thresholds:  # they decide routed steering in gated mode
            meta["refuse_thresholds"] = self.refuse_thresholds
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        return h.hexdigest()

    @property
    def layers(self) -> list[int]:
        return sorted(self.models)

    def subset(self, layers: list[int]) -> EnergyBundle:
        """The same bundle steering only `layers` (a tuned choice among those it holds)."""
        missing = sorted(set(layers) - set(self.models))
        if missing or not layers:
            raise BundleError(f"layers {missing or layers} are not a non-empty subset of the bundle's {self.layers}")
        return replace(
            self,
            models={k: v for k, v in self.models.items() if k in layers},
            thresholds={k: v for k, v in self.thresholds.items() if k in layers},
            refuse_models={k: v for k, v in self.refuse_models.items() if k in layers},
            refuse_thresholds={k: v for k, v in self.refuse_thresholds.items() if k in layers},
        )

    def with_gate_recall(self, recall: float, route_recall: float | None = None) -> EnergyBundle:
        """The same bundle with the gate threshold that catches `recall` of the validation harmful
        prompts (thresholds for several recalls are stored at training time).

        `route_recall` (at most `recall`) makes the gate three-way for routing: only rows above its
        higher threshold are steered toward refusal, rows between the two are left unsteered, so a
        request the gate is unsure about keeps the base model's behaviour instead of being pushed."""
        table = self.gate_metrics.get("by_recall", {})
        for r in (recall, route_recall):
            if r is not None and (self.gate is None or str(r) not in table):
                have = ", ".join(sorted(table)) or "none (retrain the bundle with this eds version)"
                raise BundleError(f"no gate threshold stored for recall {r}; stored: {have}")
        if route_recall is not None and route_recall > recall:
            raise BundleError(
                f"route recall {route_recall} must not exceed the gate recall {recall}: the refusal side "
                "takes the rows the gate is surest about"
            )
        if route_recall == recall:  # the same threshold: a two-way gate, stored (and hashed) as one
            route_recall = None
        metrics = {**self.gate_metrics, "recall_target": recall, **table[str(recall)]}
        metrics.pop("route", None)
        if route_recall is not None:
            metrics["route"] = {"recall_target": route_recall, **table[str(route_recall)]}
        return replace(
            self,
            gate_threshold=table[str(recall)]["threshold"],
            route_threshold=None if route_recall is None else table[str(route_recall)]["threshold"],
            gate_metrics=metrics,
        )

    @classmethod
    def from_training(
        cls,
        result: Any,
        fingerprint: Fingerprint,
        layers: list[int] | None = None,
        steering: SteerSettings | None = None,
    ) -> EnergyBundle:
        """Keep the chosen layers (or `layers`) of a TrainResult."""
        keep = layers if layers is not None else result.chosen
        missing = [layer for layer in keep if layer not in result.models]
        if missing:
            raise BundleError(f"layers {missing} were not trained (trained: {sorted(result.models)})")
        thresholds = {r.layer: r.threshold for r in result.results}
        return cls(
            fingerprint=fingerprint,
            models={layer: result.models[layer] for layer in keep},
            thresholds={layer: thresholds[layer] for layer in keep},
            steering=steering or SteerSettings(),
            metrics=result.table(),
            train_config=asdict(result.config),
            data_summary=result.data_summary,
            versions=versions(),
        )

    def check(self, lm: LoadedModel | Fingerprint, *, stacklevel: int = 3) -> None:
        """Raise BundleError unless this bundle was made for a model of this shape. Warnings point
        `stacklevel` frames up (the default: the caller's caller)."""
        fp = lm if isinstance(lm, Fingerprint) else lm.fingerprint
        bad = self.fingerprint.mismatches(fp)
        if bad:
            raise BundleError(
                f"this energy bundle was made for {self.fingerprint.name or 'another model'} and "
                f"does not fit {fp.name or 'this model'}: " + "; ".join(bad)
            )
        if self.fingerprint.name and fp.name and self.fingerprint.name != fp.name:
            warnings.warn(
                f"energy bundle made for {self.fingerprint.name!r}, used with {fp.name!r} (same shapes, so allowed)",
                stacklevel=stacklevel,
            )
        over = [layer for layer in self.layers if layer >= fp.num_layers]
        if over:
            raise BundleError(f"bundle layers {over} do not exist in a {fp.num_layers}-layer model")
        made_in = self.data_summary.get("model_dtypes")  # recorded since session 12; older bundles say nothing
        if isinstance(lm, LoadedModel) and made_in and lm.dtype_name not in made_in:
            warnings.warn(
                f"energy bundle trained on states read in {', '.join(made_in)}, used with the model in "
                f"{lm.dtype_name}: states differ a little, and so may what steering does (load with "
                f"dtype={made_in[0]!r} to match)",
                stacklevel=stacklevel,
            )

    def save(self, path: str | Path) -> Path:
        """Write `path/energy.safetensors` and `path/bundle.json` (atomically, JSON last)."""
        self.steering.validate()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"layer.{layer}.{k}": v.detach().cpu().contiguous()
            for layer, m in self.models.items()
            for k, v in m.state_dict().items()
        }
        if self.gate is not None:
            tensors |= {f"gate.{k}": v.detach().cpu().contiguous() for k, v in self.gate.state_dict().items()}
        tensors |= {
            f"refuse.{layer}.{k}": v.detach().cpu().contiguous()
            for layer, m in self.refuse_models.items()
            for k, v in m.state_dict().items()
        }
        fmt = FORMAT if self.gate is None or self.gate.pool == "last" else FORMAT_POOLED
        if self.gate is not None and self.gate_reader is not None:
            fmt = FORMAT_GATE_MODEL
        tmp = path / f".{WEIGHTS}.tmp-{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"format": fmt})
        os.replace(tmp, path / WEIGHTS)
        config = {
            "format": fmt,
            "fingerprint": self.fingerprint.to_dict(),
            "layers": {
                str(layer): {"widths": list(m.widths), "threshold": self.thresholds[layer]}
                for layer, m in sorted(self.models.items())
            },
            "steering": asdict(self.steering),
            "metrics": self.metrics,
            "train_config": self.train_config,
            "data_summary": self.data_summary,
            "versions": self.versions or versions(),
            "weights_sha256": sha256_file(path / WEIGHTS),
            "gate": None
            if self.gate is None
            else {
                "layer": self.gate_layer,
                "width": self.gate.width,
                "pool": self.gate.pool,
                **({"span": list(self.gate.span)} if self.gate.span is not None else {}),
                **({"reader": self.gate_reader.to_dict()} if self.gate_reader is not None else {}),
                "threshold": self.gate_threshold,
                "route_threshold": self.route_threshold,
                "metrics": self.gate_metrics,
            },
            "refuse": None
            if not self.refuse_models
            else {
                "layers": {
                    str(layer): {"widths": list(m.widths), "threshold": self.refuse_thresholds[layer]}
                    for layer, m in sorted(self.refuse_models.items())
                },
                "metrics": self.refuse_metrics,
            },
        }
        tmp = path / f".{CONFIG}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(config, indent=1, default=_json_default))
        os.replace(tmp, path / CONFIG)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EnergyBundle:
        path = Path(path)
        cfg_path, w_path = path / CONFIG, path / WEIGHTS
        if not cfg_path.is_file() or not w_path.is_file():
            raise BundleError(f"{path}: not an eds bundle (needs {CONFIG} and {WEIGHTS})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{cfg_path}: unreadable ({e})") from None
        if cfg.get("format") not in FORMATS:
            raise BundleError(f"{cfg_path}: format {cfg.get('format')!r}, expected one of {', '.join(FORMATS)}")
        if sha256_file(w_path) != cfg.get("weights_sha256"):
            raise BundleError(f"{w_path}: does not match the sha256 recorded in {CONFIG}; the bundle is damaged")
        try:
            return cls._from_config(cfg, load_file(str(w_path)), w_path)
        except (KeyError, TypeError, ValueError, ModelError) as e:
            if isinstance(e, BundleError):
                raise
            raise BundleError(f"{cfg_path}: malformed or damaged bundle config ({type(e).__name__}: {e})") from None

    @staticmethod
    def _models(
        layers: dict[str, Any], tensors: dict[str, torch.Tensor], kind: str, hidden: int, w_path: Path
    ) -> tuple[dict[int, EnergyMLP], dict[int, float]]:
        models, thresholds = {}, {}
        for key, info in layers.items():
            layer = int(key)
            m = EnergyMLP(hidden, tuple(info["widths"]))
            prefix = f"{kind}.{layer}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                m.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise BundleError(f"{w_path}: {kind} {layer} does not match its config ({e})") from None
            models[layer] = m.eval().requires_grad_(False)
            thresholds[layer] = float(info["threshold"])
        return models, thresholds

    @classmethod
    def _from_config(cls, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], w_path: Path) -> EnergyBundle:
        fp = Fingerprint.from_dict(cfg["fingerprint"])
        models, thresholds = cls._models(cfg["layers"], tensors, "layer", fp.hidden_size, w_path)
        steering = SteerSettings(**cfg.get("steering", {}))
        steering.validate()
        bundle = cls(
            fingerprint=fp,
            models=models,
            thresholds=thresholds,
            steering=steering,
            metrics=cfg.get("metrics", []),
            train_config=cfg.get("train_config", {}),
            data_summary=cfg.get("data_summary", {}),
            versions=cfg.get("versions", {}),
        )
        if cfg.get("gate"):
            g = cfg["gate"]
            try:
                # bundles before widths: linear; before pooling: the last prompt token
                span = g.get("span")
                reader = Fingerprint.from_dict(g["reader"]) if g.get("reader") else None
                probe = HarmProbe(
                    (reader or fp).hidden_size,
                    int(g.get("width", 0)),
                    str(g.get("pool", "last")),
                    None if span is None else (int(span[0]), int(span[1])),
                )
                probe.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")}, strict=True)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                raise BundleError(f"{w_path}: the gate does not match its config ({e})") from None
            bundle.set_gate(probe, int(g["layer"]), float(g["threshold"]), g.get("metrics"), reader)
            if g.get("route_threshold") is not None:
                if float(g["route_threshold"]) < bundle.gate_threshold:  # type: ignore[operator]
                    raise BundleError(
                        f"{w_path.parent}: route_threshold {g['route_threshold']} is below the gate threshold "
                        f"{g['threshold']}: a row would be steered both ways"
                    )
                bundle.route_threshold = float(g["route_threshold"])
        if cfg.get("refuse"):
            r = cfg["refuse"]
            bundle.refuse_models, bundle.refuse_thresholds = cls._models(
                r["layers"], tensors, "refuse", fp.hidden_size, w_path
            )
            bundle.refuse_metrics = r.get("metrics", [])
        return bundle


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
