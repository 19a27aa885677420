"""No line that brainae did not write (issue 28): ``train``, ``fit`` and the demo's training print no
third-party banner or advertisement. Run as the user runs them, in a fresh process (Lightning's log handler
writes to the stderr of the process that imported it, which an in-process runner may not capture)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import make_train_dataset, synthetic_head, write_volume

SRC = Path(__file__).resolve().parents[1] / "src"
#: Lines that Lightning (or another library) prints on its own: its banner, tips and advertisements.
FOREIGN = re.compile(
    r"GPU available|TPU available|HPU available|IPU available|LOCAL_RANK|Tip:|litlogger|litmodels|💡"
    r"|`Trainer\.fit` stopped|Seed set to|You are using a CUDA device|Lightning"
)


def _run(args: list[str], timeout: int = 240) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": ""}
    proc = subprocess.run(
        [sys.executable, "-c", "from brainae.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _foreign(output: str) -> list[str]:
    return [line for line in output.splitlines() if FOREIGN.search(line)]


def test_train_prints_only_brainae_lines(tmp_path):
    data = make_train_dataset(tmp_path / "ds", n_train=16, n_val=8)
    args = ["train", str(data), "--arch", "skip-cae", "--epochs", "1", "--batch-size", "8"]
    out = _run([*args, "--latent-channels", "8", "--accelerator", "cpu", "--out", str(tmp_path / "run")])
    assert "wrote" in out and (tmp_path / "run" / "best.safetensors").is_file()
    assert _foreign(out) == []


def test_fit_prints_only_brainae_lines(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(4):
        write_volume(cohort / f"IXI{100 + i:03d}-HH-{1000 + i}-T1.nii.gz", synthetic_head(seed=i))
    args = ["fit", "anomaly", str(cohort), "--out", str(tmp_path / "a.safetensors"), "--steps", "2"]
    out = _run([*args, "--patch", "16", "--batch-size", "2", "--mask-method", "threshold", "--device", "cpu"])
    assert "step 2/2" in out and (tmp_path / "a.safetensors").is_file()
    assert _foreign(out) == []


def test_lightning_imported_after_the_cli_quiets_it_stays_quiet(tmp_path):
    """The demo's path: the command quiets Lightning before anything imported it, then trains."""
    code = (
        "from brainae.cli._training import quiet_lightning\n"
        "quiet_lightning()\n"
        "import torch, lightning.pytorch as pl\n"
        "class M(pl.LightningModule):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.w = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, b, i): return self.w(b[0]).sum()\n"
        "    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)\n"
        f"pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,"
        f" enable_checkpointing=False, accelerator='cpu', default_root_dir={str(tmp_path)!r}).fit(M(), dl)\n"
        "print('trained')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert "trained" in lines
    assert _foreign("\n".join(lines)) == []
