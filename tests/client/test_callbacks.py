"""The adapters in real training loops: Transformers' Trainer and Lightning's Trainer
train a tiny model on the CPU, in the client's own virtual environment, with the
installed (not editable) flopledger-client; the spool must then hold exactly the tokens
and steps the loop consumed, computed here from the data."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

SCRIPT_TIMEOUT_S = 300

# A GPT-2 of one layer: 64 tokens, 64 positions, width 32. Its parameters, counted by
# hand (the output layer shares the token embedding): embeddings 64x32 + 64x32; layer
# norms 3 x 2x32; attention 32x96+96 and 32x32+32; MLP 32x128+128 and 128x32+32.
GPT2_PARAMS = 2 * 64 * 32 + 3 * 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) \
    + (32 * 128 + 128) + (128 * 32 + 32)

TRANSFORMERS_SCRIPT = """
import json, sys
import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
import flopledger_client
from flopledger_client.transformers import FlopledgerCallback

BATCH, ACCUMULATE, STEPS, PAD = 2, 2, 3, 0
torch.manual_seed(0)
# Exactly one epoch of samples, so which ones a step draws does not change the total.
lengths = [3 + (7 * i) % 11 for i in range(BATCH * ACCUMULATE * STEPS)]
samples = [[1 + (i + j) % 63 for j in range(n)] for i, n in enumerate(lengths)]


class Samples(Dataset):
    def __len__(self):
        return len(samples)

    def __getitem__(self, i):
        return {"input_ids": samples[i]}


def collate(items):
    width = max(len(x["input_ids"]) for x in items)
    ids = [x["input_ids"] + [PAD] * (width - len(x["input_ids"])) for x in items]
    mask = [[1] * len(x["input_ids"]) + [0] * (width - len(x["input_ids"])) for x in items]
    labels = [[t if m else -100 for t, m in zip(r, k)] for r, k in zip(ids, mask)]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels)}


model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                   n_positions=64, bos_token_id=1, eos_token_id=1))
args = TrainingArguments(
    output_dir=sys.argv[1], per_device_train_batch_size=BATCH,
    gradient_accumulation_steps=ACCUMULATE, max_steps=STEPS,
    # counts the attention mask; "all"/True would count padded input_ids
    include_num_input_tokens_seen="non_padding",
    report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
    learning_rate=1e-3)
trainer = Trainer(model=model, args=args, train_dataset=Samples(), data_collator=collate,
                  callbacks=[FlopledgerCallback(category="pre-training", report_every_s=0)])
trainer.train()
print(json.dumps({"tokens": sum(lengths), "steps": STEPS, "client": flopledger_client.__file__,
                  "seen": trainer.state.num_input_tokens_seen}))
"""

LIGHTNING_SCRIPT = """
import json, sys
import torch
from torch import nn
from torch.utils.data import DataLoader
import lightning.pytorch as pl
import flopledger_client
from flopledger_client.lightning import FlopledgerCallback

STEPS, ACCUMULATE, DEVICES = 3, 2, int(sys.argv[1])
torch.manual_seed(0)
batches = []
for i in range(10):
    lengths = [2 + (5 * i + 3 * j) % 9 for j in range(3)]
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    batches.append({"input_ids": torch.randint(1, 64, (3, width)) * mask,
                    "attention_mask": mask})


class TinyLm(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.head = nn.Linear(16, 64)

    def training_step(self, batch, batch_idx):
        logits = self.head(self.embed(batch["input_ids"][:, :-1]))
        labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        return nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1),
                                           ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    trainer = pl.Trainer(
        accelerator="cpu", devices=DEVICES,
        strategy="ddp_spawn" if DEVICES > 1 else "auto",
        # every rank reads the same batches in order, so each rank's tokens are known
        use_distributed_sampler=False,
        max_steps=STEPS, accumulate_grad_batches=ACCUMULATE, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[FlopledgerCallback(model="tiny-lm", report_every_s=0)])
    trainer.fit(TinyLm(), DataLoader(batches, batch_size=None))
    consumed = batches[:STEPS * ACCUMULATE]
    print(json.dumps({"tokens": sum(int(b["attention_mask"].sum()) for b in consumed),
                      "steps": STEPS, "params": 64 * 16 + 16 * 64 + 64,
                      "client": flopledger_client.__file__}))


if __name__ == "__main__":
    main()
"""


def run_script(python: Path, tmp_path: Path, source: str, *args: str
               ) -> tuple[dict[str, Any], Path]:
    """Run ``source`` with the client venv's python; (what it printed last, the spool)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "VIRTUAL_ENV"}}
    env.update(FLOPLEDGER_SPOOL_DIR=str(spool), FLOPLEDGER_RUN_ID="tiny-run",
               HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([str(python), str(script), *args, str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-5000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    # The distribution as installed, not the source tree.
    assert Path(printed["client"]).is_relative_to(python.parent.parent), printed["client"]
    return printed, spool


def read_spool(spool: Path) -> list[dict[str, Any]]:
    names = sorted(n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith("."))
    assert [n for n in os.listdir(spool) if n.startswith(".")] == []
    return [json.loads((spool / n).read_text()) for n in names]


def by_kind(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["kind"] == kind]


def test_transformers_trainer_reports_the_tokens_it_fed(client_python: Path,
                                                         tmp_path: Path) -> None:
    expected, spool = run_script(client_python, tmp_path, TRANSFORMERS_SCRIPT)
    messages = read_spool(spool)

    assert expected["seen"] == expected["tokens"]  # Trainer counted what the data holds
    [attach] = by_kind(messages, "attach")
    assert (attach["run"], attach["rank"], attach["world_size"]) == ("tiny-run", 0, 1)
    [declare] = by_kind(messages, "declare")
    assert declare["declaration"] == {
        "model": "gpt2", "category": "pre-training",
        "plan": {"steps": expected["steps"], "params": GPT2_PARAMS}}
    # Earlier progress files were replaced: one per rank is left.
    [last] = by_kind(messages, "progress")
    assert (last["tokens"], last["steps"], last["scope"], last["final"]) == (
        expected["tokens"], expected["steps"], "run", True)
    assert attach["pid"] == declare["pid"] == last["pid"]


def test_lightning_trainer_reports_each_ranks_tokens(client_python: Path,
                                                     tmp_path: Path) -> None:
    expected, spool = run_script(client_python, tmp_path, LIGHTNING_SCRIPT, "1")
    messages = read_spool(spool)

    [attach] = by_kind(messages, "attach")
    assert (attach["run"], attach["rank"], attach["world_size"]) == ("tiny-run", 0, 1)
    [declare] = by_kind(messages, "declare")
    assert declare["declaration"] == {
        "model": "tiny-lm", "plan": {"steps": expected["steps"], "params": expected["params"]}}
    [last] = by_kind(messages, "progress")
    assert (last["tokens"], last["steps"], last["scope"], last["final"]) == (
        expected["tokens"], expected["steps"], "rank", True)


def test_lightning_on_two_ranks(client_python: Path, tmp_path: Path) -> None:
    expected, spool = run_script(client_python, tmp_path, LIGHTNING_SCRIPT, "2")
    messages = read_spool(spool)

    attaches = by_kind(messages, "attach")
    assert sorted((m["rank"], m["world_size"]) for m in attaches) == [(0, 2), (1, 2)]
    assert len({m["pid"] for m in attaches}) == 2
    [declare] = by_kind(messages, "declare")
    assert declare["rank"] == 0
    progress = sorted(by_kind(messages, "progress"), key=lambda m: m["rank"])
    assert [(m["rank"], m["tokens"], m["steps"], m["scope"], m["final"]) for m in progress] == [
        (rank, expected["tokens"], expected["steps"], "rank", True) for rank in (0, 1)]
