"""Engine defaults per platform: what the CPU build needs, and the user's word over it."""

from __future__ import annotations

from worker.engine import EngineOptions


def test_on_cpu_prefills_are_whole_eager_and_take_half_the_memory() -> None:
    chosen = EngineOptions().for_platform(on_cpu=True)
    assert chosen["enable_chunked_prefill"] is False
    assert chosen["enforce_eager"] is True and chosen["gpu_memory_utilization"] == 0.5


def test_an_explicit_option_wins_over_the_platform_default() -> None:
    chosen = EngineOptions(enable_chunked_prefill=True, gpu_memory_utilization=0.1,
                           enforce_eager=False).for_platform(on_cpu=True)
    assert (chosen["enable_chunked_prefill"], chosen["gpu_memory_utilization"],
            chosen["enforce_eager"]) == (True, 0.1, False)


def test_on_gpu_vllm_keeps_its_own_defaults() -> None:
    chosen = EngineOptions().for_platform(on_cpu=False)
    assert "enable_chunked_prefill" not in chosen and "enforce_eager" not in chosen
