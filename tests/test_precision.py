"""Precision follows the hardware: bf16 only where it runs natively, and an explicit choice always wins."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab import precision
from rcdm_lab.errors import RCDMError
from rcdm_lab.precision import resolve_precision, trainer_device


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given ATen capability and bf16 instructions."""

    def make(capability: str, amx: bool = False, avx512_bf16: bool = False) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return make


def test_an_avx2_cpu_trains_in_fp32(cpu):
    cpu("AVX2")
    chosen = resolve_precision("auto", "cpu")
    assert chosen.value == "32" and chosen.autocast_dtype is None
    assert chosen.line() == "precision: 32 (this CPU has no native bf16: AVX2)"


@pytest.mark.parametrize("amx, avx512_bf16, what", [(True, True, "AMX"), (False, True, "AVX512-BF16")])
def test_a_cpu_with_native_bf16_uses_it(cpu, amx, avx512_bf16, what):
    cpu("AVX512", amx=amx, avx512_bf16=avx512_bf16)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.value == "bf16-mixed" and chosen.autocast_dtype == torch.bfloat16
    assert chosen.line() == f"precision: bf16-mixed (this CPU runs bf16 natively: {what})"


def test_aten_capped_to_avx2_on_an_amx_cpu_means_emulated_bf16(cpu):
    cpu("AVX2", amx=True, avx512_bf16=True)   # ATEN_CPU_CAPABILITY=avx2: no bf16 kernels are dispatched
    assert resolve_precision("auto", "cpu").value == "32"


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_cuda_uses_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Test GPU")
    assert resolve_precision("auto", "cuda").value == expected
    assert resolve_precision("auto", "gpu").value == expected


def test_an_explicit_precision_wins(cpu):
    cpu("AVX2")
    assert resolve_precision("bf16-mixed", "cpu").value == "bf16-mixed"
    assert resolve_precision(32, "cuda").value == "32"
    assert resolve_precision("bf16", "cpu").line() == "precision: bf16-mixed (set explicitly)"
    with pytest.raises(RCDMError, match="'fp8' is not a precision; use one of: auto, 32, bf16-mixed"):
        resolve_precision("fp8", "cpu")


def test_accelerator_auto_trains_on_cuda_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_device("auto") == "cpu" and trainer_device("gpu") == "cuda" and trainer_device("cpu") == "cpu"


def test_the_choice_is_announced_once(capsys, cpu, monkeypatch):
    cpu("AVX2")
    monkeypatch.setattr(precision, "_announced", set())
    for _ in range(3):
        precision.announce(resolve_precision("auto", "cpu"))
    assert capsys.readouterr().err == "precision: 32 (this CPU has no native bf16: AVX2)\n"
