"""Pretrain a LLaMA with SinkGD (or SWAN, AdamW, Adafactor, Muon, SGD) on a device mesh.

    python train.py                       # tiny model, SinkGD, stdlib corpus
    python train.py --model 60m --tokenizer llama/tokenizer.model --data 'corpus/*.txt' \\
        --batch-size 512 --seq-len 256 --steps 10000 --mesh data=1,fsdp=8,tensor=1

Like flax's examples, this file is intentionally short: the machinery lives in
the `pretrain` package (the loop in pretrain/trainer.py, the flags in
pretrain/config.py). Installed, the same command is `mno-train`.
"""

from pretrain.cli import main_exit

if __name__ == "__main__":
  main_exit(prog="train.py")
