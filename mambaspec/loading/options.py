"""How a model is loaded and made cheap: one object every command and the Python API pass.

Importing this module is cheap (no torch), so the CLI can check options before the heavy imports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import MambaspecError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "float64")
LINEAR_BACKENDS = ("auto", "onednn", "torch")
QUANTIZE = ("none", "int8")


@dataclass(frozen=True)
class ModelOptions:
    """``device``/``dtype``/``device_map`` place the weights; ``linear``, ``quantize`` and ``compile`` make
    the target's forward cheaper (``cpu.linears.optimize_model``; drafters get ``linear`` only). ``threads``: torch's
    CPU threads for the process, set when a model loads (None: torch's default, one per core; on a machine other
    work keeps busy, 1 is often much faster than contending for every core)."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    linear: str = "auto"
    quantize: str = "none"
    compile: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise MambaspecError(f"unknown device '{self.device}'; use cpu, cuda, cuda:N or auto")
        if self.dtype not in DTYPES:
            raise MambaspecError(f"unknown dtype '{self.dtype}'; use auto, float32, bfloat16, float16 or float64")
        if self.linear not in LINEAR_BACKENDS:
            raise MambaspecError(f"unknown linear backend '{self.linear}'; use one of {', '.join(LINEAR_BACKENDS)}")
        if self.quantize not in QUANTIZE:
            raise MambaspecError(f"unknown quantization '{self.quantize}'; use one of {', '.join(QUANTIZE)}")
        if self.compile and self.quantize != "none":
            raise MambaspecError("compiling and int8 quantization do not combine; pick one")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise MambaspecError(f"threads must be a whole number of at least 1 (None: one per core), "
                                 f"got {self.threads}")

    def apply_threads(self) -> None:
        """Give torch ``threads`` CPU threads (nothing when None). Threads are the process's, not one model's."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    def for_drafter(self) -> ModelOptions:
        """A drafter shares the device and dtype and the linear backend, never quantization or compilation."""
        return ModelOptions(device=self.device, dtype=self.dtype, linear=self.linear)

    def as_dict(self) -> dict:
        return asdict(self)


CROSS_TOKENIZER = ("auto", "on", "off")


def check_cross_tokenizer(mode: str) -> None:
    """``auto``: translate a drafter's drafts through text when its tokenizer differs; ``on``: always;
    ``off``: never."""
    if mode not in CROSS_TOKENIZER:
        raise MambaspecError(f"cross-tokenizer mode must be one of {', '.join(CROSS_TOKENIZER)}, got '{mode}'")
