"""Peak memory per rank while loading a pretrained checkpoint: ZeRO-3's partitioned loading
against ZeRO-1/2's whole model on every rank.

    python -m cats_ds.tools.load_memory --make-model DIR [--params 120]     # a random M2M100 of ~120M parameters
    DS_ACCELERATOR=cpu python -m cats_ds.tools.load_memory --model DIR [--stages 2 3] [--ranks 2]

For each stage the deepspeed launcher starts ``--ranks`` processes; each loads the directory
through cats_ds.pretrained.load_model (under ZeRO-3 straight into DeepSpeed's partitions) in
fp32, then builds the DeepSpeed engine on it as training does, and reports the peak it added
(CUDA: max allocated bytes; CPU: the peak resident set over the state before, VmHWM) after
loading and after the engine, what it still holds, and the parameter bytes it holds. Prints a
table and the ZeRO-3 / ZeRO-2 ratio of the peaks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cats_ds import distributed, packaged, pretrained
from cats_ds.config import RunConfig
from cats_ds.engine import build_engine, load_ds_config
from cats_ds.tools.bench import init_process


def make_model(directory: Path, millions: int) -> int:
    """Saves a random M2M100 of about ``millions`` million parameters (config.json + weights)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration
    pair = 12 * 768 * 768 + 4 * 768 * 3072      # an encoder layer and a decoder layer: attention, cross-attention, FFN
    layers = max(1, round((millions * 1e6 - 32_000 * 768) / pair))
    config = M2M100Config(vocab_size=32_000, d_model=768, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                          decoder_ffn_dim=3072, max_position_embeddings=258)
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def measure(model_dir: str, stage: int) -> dict:
    """This rank's peak while loading, then while DeepSpeed builds its engine on the model (the
    weights are read from the mmapped safetensors file only when first touched, which may be
    there), and the parameter bytes the rank holds."""
    meter = init_process()
    config = RunConfig()
    config.train.ds_config = f"ds_configs/zero{stage}.json"
    ds_config = load_ds_config(packaged.ds_config(config.train.ds_config), config)
    hf_config = pretrained.load_config(model_dir)
    base = meter.start()
    model = pretrained.load_model(model_dir, hf_config, "", ds_config, torch.float32)
    loading = meter.since(base)
    engine = build_engine(config, model, ds_config)
    with_engine = meter.since(base)
    held = sum(getattr(p, "ds_tensor", p).numel() * 4 for p in engine.module.parameters()) / 2 ** 20
    return {"rank": distributed.rank(), "stage": stage, "load_peak_mib": loading["peak_mib"],
            "engine_peak_mib": with_engine["peak_mib"], "engine_held_mib": with_engine["held_mib"],
            "parameter_mib": held}


def launch(model_dir: Path, stage: int, ranks: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "rank"
        launcher = Path(sys.executable).with_name("deepspeed")
        command = [str(launcher), "--num_accelerators", str(ranks), "--master_port", str(distributed.free_port()),
                   "--module", "cats_ds.tools.load_memory", "--model", str(model_dir), "--one", str(stage),
                   "--json", str(out)]
        result = subprocess.run(command, text=True, capture_output=True)
        if result.returncode != 0:
            raise SystemExit(f"loading under ZeRO-{stage} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(ranks)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a local pretrained directory")
    parser.add_argument("--make-model", type=Path, help="write a random M2M100 of --params million parameters here")
    parser.add_argument("--params", type=int, default=120)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)     # a launched rank: this stage
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_model:
        print(f"{args.make_model}: {make_model(args.make_model, args.params):,} parameters")
        return
    if args.one is not None:
        result = measure(str(args.model), args.one)
        Path(f"{args.json}.{result['rank']}").write_text(json.dumps(result))
        return
    print(f"loading {args.model} on {args.ranks} ranks (fp32):")
    print("| ZeRO stage | rank | peak: loading (MiB) | peak: loading + engine (MiB) | held after (MiB) "
          "| parameters held (MiB) |\n|---:|---:|---:|---:|---:|---:|")
    peaks = {}
    for stage in args.stages:
        results = launch(args.model, stage, args.ranks)
        for r in results:
            print(f"| {stage} | {r['rank']} | {r['load_peak_mib']:,.0f} | {r['engine_peak_mib']:,.0f} "
                  f"| {r['engine_held_mib']:,.0f} | {r['parameter_mib']:,.0f} |")
        peaks[stage] = max(r["engine_peak_mib"] for r in results)
    if 2 in peaks and 3 in peaks:
        print(f"ZeRO-3 / ZeRO-2 peak per rank (loading + engine, the larger rank): {peaks[3] / peaks[2]:.2f}")


if __name__ == "__main__":
    main()
