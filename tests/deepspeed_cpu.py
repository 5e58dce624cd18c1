"""Launch shim for the DeepSpeed tests: `accelerate launch --config_file DS.yaml tests/deepspeed_cpu.py
(-m MODULE | SCRIPT) ARGS...` on a machine without GPUs.

accelerate has no CPU path for DeepSpeed: with `--cpu` it quietly runs DDP instead, and without it picks no
process-group backend (it only knows accelerator backends such as nccl), so DeepSpeed starts with none. DeepSpeed
itself runs on CPUs (`DS_ACCELERATOR=cpu`, gloo). This shim changes one thing, the backend accelerate picks
when none fits, to gloo, and then runs the module or script; everything else (the DeepSpeed engine, ZeRO,
accelerate's wrappers) is the real code path."""

import os
import runpy
import sys

import accelerate.state

os.environ.setdefault("DS_ACCELERATOR", "cpu")
_prepare_backend = accelerate.state.PartialState._prepare_backend


def _gloo_when_none(self, cpu=False, sagemaker_dp=False, backend=None):
    backend, kind = _prepare_backend(self, cpu, sagemaker_dp, backend)
    return backend or "gloo", kind


accelerate.state.PartialState._prepare_backend = _gloo_when_none

if __name__ == "__main__":
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
