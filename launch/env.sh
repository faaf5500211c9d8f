# Sourced by the launch scripts (from the repository root): DeepSpeed picks CUDA unless told
# otherwise, so where no NVIDIA GPU is visible it gets the CPU accelerator (gloo). The Python they
# run is $PYTHON (launch/python.sh).
# shellcheck shell=bash
has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
has_nvidia_gpu || export DS_ACCELERATOR=cpu
export PYTHONUNBUFFERED=1
source launch/python.sh
