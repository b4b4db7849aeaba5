"""Which numeric precision to train and sample in, chosen from the hardware: the one home of that decision.

bf16 autocast only pays where the hardware runs bf16 natively. On a CPU without AVX512-BF16 or AMX, torch emulates
it: measured on a 2-core AVX2 EPYC, a demo training step took ~10 s in bf16 against 0.68 s in fp32, while on a
CPU with AMX bf16 was ~1.8x faster than fp32. So `auto` resolves to

- CUDA with bf16 support -> ``bf16-mixed``; CUDA without -> ``16-mixed``;
- a CPU with native bf16 (AVX512-BF16 or AMX, and ATen dispatching AVX512 kernels) -> ``bf16-mixed``;
- any other CPU -> ``32``.

An explicit value (``32``, ``bf16-mixed``, ``16-mixed``, ...) is used as given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from rcdm_lab.errors import RCDMError

# Lightning's spellings of the precisions this project uses, plus the short forms people type.
_ALIASES = {
    "32": "32", "32-true": "32", "fp32": "32", "64": "64", "64-true": "64",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
    "16": "16-mixed", "16-mixed": "16-mixed", "fp16": "16-mixed", "16-true": "16-true",
}
CHOICES = ("auto", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64")
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision (a Lightning ``precision=`` value) and why it was chosen."""

    value: str
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype sampling uses for this precision (None: plain fp32)."""
        return _AUTOCAST_DTYPES.get(self.value)

    def line(self) -> str:
        return f"precision: {self.value} ({self.reason})"


def cpu_bf16_support() -> tuple[bool, str]:
    """(native bf16 on this CPU?, what the CPU offers, for the log line)."""
    capability = torch.backends.cpu.get_cpu_capability()
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    # ATEN_CPU_CAPABILITY=avx2 (or an old torch) dispatches AVX2 kernels even on an AMX CPU: bf16 is emulated then.
    if (amx or avx512_bf16) and capability.startswith("AVX512"):
        return True, "AMX" if amx else "AVX512-BF16"
    return False, capability


def normalise_precision(requested: object) -> str:
    """'auto' or Lightning's spelling of a precision ('bf16' -> 'bf16-mixed'); RCDMError for anything else."""
    text = str(requested).strip().lower()
    if text == "auto":
        return text
    if text not in _ALIASES:
        raise RCDMError(f"{requested!r} is not a precision; use one of: {', '.join(CHOICES)}")
    return _ALIASES[text]


def resolve_precision(requested: object = "auto", device: str | torch.device = "cpu") -> Precision:
    """The precision to run in on `device` ("cpu", "cuda", "cuda:1", a torch.device, or Lightning's "gpu")."""
    value = normalise_precision(requested)
    if value != "auto":
        return Precision(value, "set explicitly")
    kind = torch.device("cuda" if str(device) == "gpu" else device).type
    if kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device) if str(device) != "gpu" else None)
        if torch.cuda.is_bf16_supported():
            return Precision("bf16-mixed", f"CUDA device {name} supports bf16")
        return Precision("16-mixed", f"CUDA device {name} has no bf16")
    if kind == "cpu":
        native, what = cpu_bf16_support()
        if native:
            return Precision("bf16-mixed", f"this CPU runs bf16 natively: {what}")
        return Precision("32", f"this CPU has no native bf16: {what}")
    return Precision("32", f"no mixed-precision rule for {kind} devices")


def trainer_device(accelerator: object) -> str:
    """The device kind a Lightning `accelerator` setting trains on ("auto" picks CUDA when there is one)."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


_announced: set[str] = set()


@rank_zero_only
def _print_once(line: str) -> None:
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)


def announce(precision: Precision) -> Precision:
    """Print `precision: VALUE (why)` once per process (rank zero only), and return it."""
    _print_once(precision.line())
    return precision
