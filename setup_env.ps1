# Windows set-up: the same steps as `make setup`, with a CUDA build of torch.
#   powershell -ExecutionPolicy Bypass -File setup_env.ps1 [-Cpu]
param([switch]$Cpu)
$ErrorActionPreference = "Stop"

if (-not (Test-Path .venv\Scripts\python.exe)) { py -3.11 -m venv .venv }
$py = ".venv\Scripts\python.exe"
& $py -m pip install --upgrade pip

# torch first, so that no later requirement pulls another build.
if ($Cpu) {
    & $py -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
} else {
    & $py -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
}
& $py -m pip install -e ".[all]"
if (-not $Cpu) {
    # GPU inference for the face service.
    & $py -m pip uninstall -y onnxruntime
    & $py -m pip install onnxruntime-gpu
}

Write-Host "Done. Redis: run it in WSL or Docker (docker run -p 6380:6379 redis:8), then:"
Write-Host "  .venv\Scripts\convo up"
