"""The `vaecompress` command line: parse, call the library, print. Nothing clever lives here."""
from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from bbans_vae.errors import VaeCompressError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so every `finally` cleans up (temp files
    and folders) exactly as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(owner: int, signum, frame):
    if os.getpid() != owner:            # a forked worker (--workers): die the default way, quietly
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signum)


def _rank_prefix() -> str:
    """"rank N: " in a torchrun process other than rank 0 (each rank reports its own errors)."""
    rank = os.environ.get("RANK", "0")
    return f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and rank != "0" else ""


class App(click.Group):
    """Turns user errors into one line on stderr and exit code 1; --debug shows tracebacks.
    SIGTERM and SIGHUP end the command like Ctrl-C (cleanup, one line, exit 128 + signal)."""

    def invoke(self, ctx):
        handled = (signal.SIGTERM, signal.SIGHUP)
        try:
            handler = functools.partial(_on_signal, os.getpid())
            before = {s: signal.signal(s, handler) for s in handled}
        except ValueError:  # not the main thread (e.g. called from a library thread): leave signals alone
            before = {}
        try:
            return self._invoke(ctx)
        finally:
            for s, h in before.items():
                signal.signal(s, h)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaeCompressError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"vaecompress: error: {_rank_prefix()}{e}", err=True)
            ctx.exit(1)
        except Terminated as e:
            click.echo(f"vaecompress: error: terminated by {signal.Signals(e.signum).name}; "
                       "partial outputs were removed", err=True)
            ctx.exit(128 + e.signum)
        except KeyboardInterrupt:
            click.echo("vaecompress: error: interrupted", err=True)
            ctx.exit(130)
        except (MemoryError, OSError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"vaecompress: error: {type(e).__name__}: {e}", err=True)
            ctx.exit(1)


@click.group(cls=App, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="vaecompress")
@click.pass_context
def main(ctx, debug):
    """Lossless image compression with a VAE and bits-back ANS, and a meter of its
    generalization gaps in real bits.

    \b
    Quick start:
      vaecompress demo                                  # no data needed
      vaecompress encode digits/ -o digits.vae          # PNG folder -> one file
      vaecompress decode digits.vae -o restored/        # pixel-exact
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def progress_bar(total: int | None, desc: str, quiet: bool):
    """A tqdm bar on a terminal, a no-op otherwise (or with --quiet)."""
    from tqdm import tqdm
    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False, file=sys.stderr)


def team_progress_bar(total: int, desc: str, quiet: bool, team):
    """`progress_bar`; under torchrun only rank 0 shows one, counting the images it codes itself
    (no total: the other ranks' progress is not sent to it)."""
    if team is None:
        return progress_bar(total, desc, quiet)
    bar = progress_bar(total, f"{desc} (rank 0 of {team.size})", quiet or not team.is_root)
    bar.total = None
    return bar


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    return "vaecompress " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """A comma-separated list of integers ('' is the empty list); None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VaeCompressError(f"{option} must be comma-separated integers, not {text!r}") from None


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None,
    help="Dataset root (torchvision layout). Default: $VAECOMPRESS_DATA, else ~/.cache/vaecompress/data.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
workers_option = click.option(
    "--workers", "-j", type=click.IntRange(1, 1024), default=None,
    help="Processes coding groups of chains in parallel (exact coder path; the file is the same for "
         "any number). Default: this machine's cores (at most one per chain).")


def default_workers(workers: int | None, team=None) -> int:
    """--workers, else this machine's cores (shared by the torchrun ranks on this machine)."""
    from bbans_vae.ans.workers import available_cores
    return workers or max(1, available_cores() // (team.local_size if team is not None else 1))


def torchrun_team(device: str = "cpu"):
    """This process's place under torchrun (`bbans_vae.distributed.Team`), or None."""
    from bbans_vae.distributed import from_env
    return from_env(device)


# ----------------------------------------------------------------------------- train


@main.command(context_settings=CONTEXT)
@click.option("--dataset", "-d", required=True,
              help="mnist-bin, mnist-bin-stoch, binarized-mnist, mnist, fashion-mnist, or a path: a folder of "
                   "PNGs (recursive; gray or RGB), a .npy/.npz array (N,H,W) or (N,H,W,3) uint8, or an IDX file.")
@click.option("--test", "test_path", type=click.Path(exists=True), default=None,
              help="Path dataset: the test images (same kinds as --dataset).")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Path dataset: hold out this fraction as test images, chosen by --seed.  [default: 0.1]")
@click.option("--pixels", type=click.Choice(["auto", "binary", "8bit"]), default="auto", show_default=True,
              help="Path dataset: auto = binary if every value is 0/1 or 0/255, else 8-bit; binary thresholds at 128.")
@click.option("--model", "-m", "arch", required=True,
              help="Architecture preset (see `vaecompress models --presets`), or from-init with --init.")
@click.option("--epochs", "-e", type=click.IntRange(1), required=True)
@click.option("--out", "-o", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory (created; an existing one is resumed).")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-size", type=click.IntRange(1), default=None, help="Train on a fixed random subset of N images.")
@click.option("--save-every", type=click.IntRange(1), default=None, help="Checkpoint every S epochs (and at the end).")
@click.option("--latent-dim", type=click.IntRange(1), default=None, help="Override the preset's latent size.")
@click.option("--hidden", default=None, help="Override hidden sizes, e.g. 500,500,500.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads.  [default: 1 on CPU (measured: one mlp-paper epoch took 11 s on 1 thread, "
                   "81 s with torch's default threads on 2 shared cores); torch's default with CUDA]")
@click.option("--init", "init_ref", default=None, help="Start from this model's weights (bundled name or checkpoint).")
@click.option("--encoder-objective", "objective", default="elbo", show_default=True,
              type=click.Choice(["elbo", "encoder-elbo", "reverse-half-asleep", "reverse-half-asleep-recon"]),
              help="elbo: ordinary training. The others freeze the decoder of --init and train only the "
                   "encoder: on real images (encoder-elbo), or on batches half real, half dreamed by the "
                   "model from the prior (reverse-half-asleep) or by reconstruction (-recon).")
@data_dir_option
@quiet_option
def train(dataset, test_path, holdout, pixels, arch, epochs, run_dir, batch_size, lr, seed, train_size, save_every,
          latent_dim, hidden, device, threads, init_ref, objective, data_dir, quiet):
    """Train a VAE on a dataset; checkpoints go to RUN_DIR/checkpoints/epoch_NNNN/.

    \b
    Examples:
      vaecompress train -d mnist-bin -m mlp-paper -e 100 -o runs/paper
      vaecompress train -d mnist-bin -m mlp-paper -e 300 --train-size 1000 --save-every 25 -o runs/overfit
      vaecompress train -d mnist-bin -m mlp-paper -e 20 --init mnist-bin-paper \
          --encoder-objective reverse-half-asleep -o runs/paper-rha
      vaecompress train -d my_pngs/ --holdout 0.1 -m ctx-8bit -e 50 -o runs/mine
    A path dataset's model takes its image size from the data; the run records the data's path,
    sha256, shape and split, so `eval` and `gaps` use the same images later.
    Re-running the same command on the same RUN_DIR resumes where it stopped.
    On CPU, training runs on --threads torch threads (default 1: the batches are small, and on
    shared cores more threads cost far more than they gain).

    Under torchrun (e.g. `torchrun --standalone --nproc_per_node 2 -m vaecompress_cli.main train
    ...`) it trains data-parallel: each batch split over the processes (gloo on CPU, NCCL on CUDA,
    one GPU each), same run directory, checkpoints and resume; rank 0 writes. The README has the
    several-machine command.
    """
    from tqdm import tqdm
    from bbans_vae.data import DATASETS, open_dataset
    from bbans_vae.models import preset_config
    from bbans_vae.settings import with_overrides
    from bbans_vae.train import TrainArgs, pick_device, train as run_training

    if dataset not in DATASETS and test_path is None and holdout is None:
        holdout = 0.1
    spec = open_dataset(dataset, test=test_path, holdout=holdout, pixels=None if pixels == "auto" else pixels,
                        seed=seed, data_root=data_dir)
    if init_ref is not None and arch == "from-init":
        from bbans_vae.checkpoint import load_model
        cfg = load_model(init_ref)[0].cfg
    else:
        cfg = preset_config(arch, spec.image_shape)
    cfg = with_overrides(cfg, latent_dim=latent_dim, hidden=int_list(hidden, "--hidden"))
    if cfg.pixel_kind != spec.pixel_kind:
        raise VaeCompressError(f"preset {arch} codes {cfg.pixel_kind} pixels; dataset {dataset} is {spec.pixel_kind}"
                               + ("" if spec.record is None else " (see --pixels)"))
    from bbans_vae.distributed import joined
    dev = pick_device(device)
    team = torchrun_team(dev)
    if team is not None and dev == "cuda":
        dev = team.device                   # one GPU per process: cuda:LOCAL_RANK
    root = team is None or team.is_root
    args = TrainArgs(dataset=spec.name, model=cfg.to_dict(), epochs=epochs, batch_size=batch_size, lr=lr,
                     seed=seed, train_size=train_size, save_every=save_every, data_dir=data_dir,
                     init=init_ref, objective=objective, data=spec.record)
    import torch
    if threads is None and dev == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    meta = {"command": command_line(), "git_revision": git_revision(), "preset": arch,
            "hardware": f"{dev}, {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
                        + (f", {team.size} processes (torchrun)" if team is not None else "")}
    bar = tqdm(total=epochs, desc="epochs", disable=quiet or not root or not sys.stderr.isatty(), file=sys.stderr)
    t0 = time.time()

    def on_epoch(rec):
        bar.update(1)
        bar.set_postfix(loss_bpd=f"{rec['train_loss_bpd']:.4f}")
        if "test_neg_elbo_bpd" in rec:
            bar.write(f"epoch {rec['epoch']}: train {rec['train_loss_bpd']:.4f} bpd, "
                      f"test -ELBO {rec['test_neg_elbo_bpd']:.4f} bpd", file=sys.stderr)

    with joined(team):
        last = run_training(Path(run_dir), args, device=dev, meta=meta, on_epoch=on_epoch, dataset=spec, team=team)
    bar.close()
    if not root:
        return
    click.echo(f"trained {arch} on {dataset} in {time.time() - t0:.0f} s; checkpoint: {last}")


# ----------------------------------------------------------------------------- eval


@main.command("eval", context_settings=CONTEXT)
@click.argument("model_ref", metavar="MODEL")
@click.option("--dataset", "-d", default=None,
              help="A dataset name or path (all its images, unless --test/--holdout). Default: the model's "
                   "training data (a path's is checked by sha256) and its test split.")
@click.option("--test", "test_path", type=click.Path(exists=True), default=None, help="Path dataset: its test images.")
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Path dataset: hold out this fraction as test images, chosen by --seed.")
@click.option("--pixels", type=click.Choice(["auto", "binary", "8bit"]), default="auto", show_default=True,
              help="Path dataset: pixel kind (auto: binary if every value is 0/1 or 0/255).")
@click.option("--split", default=None, help="train, test or all.  [default: test where there is one, else all]")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images.")
@click.option("--iwae", "iwae_k", type=click.IntRange(1), default=None, help="Also estimate -log p(x) with K importance samples.")
@click.option("--samples", type=click.IntRange(1), default=1, show_default=True, help="MC samples for the -ELBO reconstruction term.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--workers", "-j", type=click.IntRange(1, 1024), default=None,
              help="Processes sharing the chunks of 1,000 images (each chunk seeded on its own, one torch "
                   "thread each: the numbers are the same for any number). Default: this machine's cores.")
@data_dir_option
@quiet_option
def eval_cmd(model_ref, dataset, test_path, holdout, pixels, split, limit, iwae_k, samples, seed, as_json, workers,
             data_dir, quiet):
    """Negative ELBO (and IWAE) of MODEL on a dataset split, in bits per dimension.

    \b
    Examples:
      vaecompress eval mnist-bin --dataset mnist-bin --json
      vaecompress eval runs/paper --iwae 1000 --limit 1000
    """
    from bbans_vae.evaluate import evaluate
    from bbans_vae.checkpoint import load_model
    from bbans_vae.data import open_dataset, run_dataset
    model, config, path = load_model(model_ref)
    if dataset is None and (test_path is not None or holdout is not None or pixels != "auto"):
        raise VaeCompressError("--test, --holdout and --pixels describe a --dataset path; pass one")
    if dataset is None:
        ds = run_dataset(config, data_dir)
    else:
        ds = open_dataset(dataset, test=test_path, holdout=holdout, pixels=None if pixels == "auto" else pixels,
                          seed=seed, data_root=data_dir)
    split = split or ds.eval_split
    dataset = ds.name
    with progress_bar(None, "eval", quiet) as bar:
        res = evaluate(model, ds, split, limit=limit, iwae_k=iwae_k, n_samples=samples, seed=seed,
                       workers=default_workers(workers), progress=bar.update)
    res = {"model": model_ref, "checkpoint": str(path), **res}
    if as_json:
        echo_json(res)
    else:
        line = f"{model_ref} on {dataset}/{split} ({res['n_images']} images): -ELBO {res['neg_elbo_bpd']:.4f} bpd"
        if "iwae_bpd" in res:
            line += f", IWAE(k={iwae_k}) {res['iwae_bpd']:.4f} bpd"
        click.echo(line)


# ----------------------------------------------------------------------------- models


@main.command(context_settings=CONTEXT)
@click.option("--presets", is_flag=True, help="List the architecture presets instead.")
@click.option("--json", "as_json", is_flag=True)
def models(presets, as_json):
    """List bundled models (name, dataset, test -ELBO bpd, size) or architecture presets."""
    if presets:
        from bbans_vae.models import PRESETS, build_model, count_parameters
        rows = [{"preset": n, "parameters": count_parameters(build_model(c)), "description": d}
                for n, (c, d) in PRESETS.items()]
        if as_json:
            echo_json(rows)
        else:
            for r in rows:
                click.echo(f"{r['preset']:<16} {r['parameters']:>10,}  {r['description']}")
        return
    from bbans_vae.checkpoint import bundled_models, read_config, WEIGHTS
    rows = []
    for name, path in bundled_models().items():
        c = read_config(path)
        rows.append({"name": name, "dataset": c.get("dataset"), "preset": c.get("preset"),
                     "test_neg_elbo_bpd": (c.get("metrics") or {}).get("test_neg_elbo_bpd"),
                     "size_bytes": (path / WEIGHTS).stat().st_size, "epoch": c.get("epoch")})
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no bundled models installed")
    for r in rows:
        bpd = f"{r['test_neg_elbo_bpd']:.4f}" if r["test_neg_elbo_bpd"] is not None else "?"
        click.echo(f"{r['name']:<16} {r['dataset']:<16} {r['preset'] or '':<14} test -ELBO {bpd} bpd  "
                   f"{r['size_bytes'] / 1e6:.1f} MB")



# ----------------------------------------------------------------------------- encode / decode / info


def _load_for_coding(model_ref: str):
    from bbans_vae.checkpoint import load_model
    model, config, path = load_model(model_ref)
    return model, config


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), metavar="INPUT...")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The .vae file to write.")
@click.option("--model", "-m", "model_ref", default=None,
              help="Bundled model name or checkpoint/run directory. Default: mnist-bin-ctx for "
                   "binary images (values 0/1 or 0/255), mnist-ctx for 8-bit (context models, best rate).")
@click.option("--chains", type=click.IntRange(1, 4096), default=None,
              help="Independent ANS chains (batch size of the network calls). Default: 1 per 1,000 images, max 32.")
@click.option("--latent-bits", type=click.IntRange(4, 14), default=8, show_default=True,
              help="2^K equal-mass buckets per latent dimension.")
@click.option("--refine-steps", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Transmit-free posterior refinement: K Adam steps on each image's ELBO before coding "
                   "its latent; the decoder repeats them. Measured on 10k mnist-bin: K=2 -1.9% at ~1,900 img/s, K=10 -4.8% at ~660 img/s. Float32 path only.")
@click.option("--coder-path", type=click.Choice(["exact", "float32"]), default=None,
              help="How the coder's distributions are computed. exact: integer networks and bundled "
                   "tables, so the file decodes on any machine (other CPU, BLAS, threads). float32: this "
                   "machine's float kernels; decode on the same configuration.  [default: exact; float32 with "
                   "--refine-steps, which needs it]")
@click.option("--importance-samples", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Code with the importance-weighted bound of K coupled latent samples instead of the ELBO "
                   "(multi-sample bits-back, BB-IS): a few %% smaller, ~K times slower; decode needs no flag.")
@click.option("--start", type=click.Choice(["auto", "plain", "cheap"]), default="auto", show_default=True,
              help="How a chain's first images (no bits to take back) code their latent: plain (posterior mode, "
                   "full precision), cheap (the precision that makes each image shortest), auto (cheap when every "
                   "chain codes one image, e.g. a single-image file).")
@click.option("--force", "-f", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the coding report as JSON.")
@click.option("--elbo/--no-elbo", default=False, show_default=True,
              help="Also report the model's -ELBO (one more forward pass over the images, ~15% of the "
                   "encode time for context models); off by default, so plain encoding pays nothing for it.")
@workers_option
@quiet_option
def encode(inputs, output, model_ref, chains, latent_bits, refine_steps, importance_samples, start, coder_path, force,
           as_json, elbo, workers, quiet):
    """Compress images losslessly into one .vae file.

    INPUT: PNG files (gray or RGB), folders of PNGs (sorted by name), .npy arrays (N,H,W) or
    (N,H,W,3) uint8, or IDX files (e.g. t10k-images-idx3-ubyte.gz). Images of several sizes go
    into one file with a conv model (presets conv-bin, conv-8bit: any size); other models code
    the one size they were trained on. Pixels are restored exactly by
    `decode`; PNG metadata (text chunks, gamma, palette, bit depth) is not kept, only the 8-bit
    gray or RGB values.

    \b
    Examples:
      vaecompress encode digits/ -o digits.vae
      vaecompress encode t10k-images-idx3-ubyte.gz -o mnist-test.vae --model mnist --json
    """
    from .io import check_output_file, read_inputs, write_file_atomic
    from bbans_vae.distributed import joined, root_first
    from bbans_vae.pipeline import compress, default_model_name

    out = Path(output)
    team = torchrun_team()                 # under torchrun: ranks code chain groups, rank 0 writes
    with joined(team):
        # before the work: exists, not a regular file, not writable
        root_first(team, lambda: check_output_file(out, force))
        images = read_inputs([Path(p) for p in inputs], mixed_sizes=True)
        if model_ref is None:
            model_ref = default_model_name(images.pixels)
        model, config = _load_for_coding(model_ref)
        indexed = all(n == f"{images.names[0].rsplit('_', 1)[0]}_{i:05d}" for i, n in enumerate(images.names))
        stem = images.names[0].rsplit("_", 1)[0] if indexed else None
        with team_progress_bar(len(images.pixels), "encode", quiet, team) as bar:
            data, report = compress(model, model_ref, config["weights_sha256"], images.pixels,
                                    names=None if indexed else images.names, names_stem=stem or "image",
                                    n_chains=chains, latent_bits=latent_bits, progress=bar.update,
                                    refine_steps=refine_steps, coder_path=coder_path, with_neg_elbo=elbo,
                                    workers=default_workers(workers, team), importance_samples=importance_samples,
                                    start=start, team=team)
    if data is None:                       # a torchrun rank other than 0: rank 0 writes and reports
        return
    write_file_atomic(out, data, force=force)
    report = {"output": str(out), "model": model_ref, "bytes": len(data), **report}
    if as_json:
        echo_json(report)
    else:
        mixed = isinstance(images.pixels, list)
        size = "of several sizes" if mixed else "x".join(str(s) for s in images.pixels.shape[1:])
        click.echo(f"{report['n_images']} images {size} -> {out} ({len(data):,} bytes): "
                   f"{report['actual_bpd']:.4f} bpd"
                   + (f" (model -ELBO {report['neg_elbo_bpd']:.4f} bpd)" if elbo else "") + ", "
                   f"model {model_ref}, {report['chains']} chains, "
                   f"{report['encode_images_per_second']:,.0f} images/s")


@main.command(context_settings=CONTEXT)
@click.argument("input_file", type=click.Path(dir_okay=False), metavar="IN.vae")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["png", "npy"]), default="png", show_default=True,
              help="png: one 8-bit gray or RGB PNG per image; npy: images.npy (N,H,W[,3]) uint8 + names.txt.")
@click.option("--model", "-m", "model_ref", default=None,
              help="Model to decode with (bundled name or checkpoint folder). Default: the file's model, found "
                   "by its sha256 among the bundled models and the checkpoints in $VAECOMPRESS_MODELS "
                   "(folders separated by ':').")
@click.option("--force", "-f", is_flag=True,
              help="Write into OUTDIR if it exists, replacing only the files decode writes (never a device, "
                   "FIFO, socket or link).")
@click.option("--max-memory", "max_memory", default=None, metavar="SIZE", callback=lambda c, p, v: _size(v, p),
              help="Refuse files whose decode needs more memory than SIZE (e.g. 2G), estimated from the header "
                   "and the model before decoding.  [default: half of the available RAM]")
@click.option("--max-output-bytes", "max_output", default=None, metavar="SIZE", callback=lambda c, p, v: _size(v, p),
              help="Refuse files that decode to more than SIZE bytes of pixels.  [default: no limit beyond "
                   "--max-memory and the free disk space]")
@click.option("--trust-v1", is_flag=True,
              help="Decode a version-1 file of more than 1,000 images (or with refinement): such files hold no "
                   "block checksums, so corruption shows only at the end.")
@click.option("--json", "as_json", is_flag=True)
@workers_option
@quiet_option
def decode(input_file, output, fmt, model_ref, force, max_memory, max_output, trust_v1, as_json, workers, quiet):
    """Restore the exact pixels from a .vae file into a directory.

    The decoded pixels are checked against the checksums stored at encode time, block by block
    while decoding; on any mismatch nothing is written. Bitstreams are tied to the model file;
    files written on the exact coder path (the default) decode on any machine with the same
    constriction version, float32-path files (--coder-path float32, --refine-steps) only on the
    machine configuration that encoded them. Reads format versions 1 and 2.

    \b
    Examples:
      vaecompress decode digits.vae -o restored/
      vaecompress decode mnist-test.vae -o out/ --format npy
    """
    import shutil
    from .io import check_output_dir, output_files, write_outputs
    from bbans_vae.checkpoint import load_checkpoint, locate_model
    from bbans_vae.pipeline import check_decodable, decompress_parsed
    from bbans_vae.container import read_file
    from bbans_vae.errors import InputError
    from bbans_vae.limits import LimitError, default_max_memory

    from bbans_vae.distributed import joined, root_first

    out = Path(output)
    cap = max_memory if max_memory is not None else default_max_memory()
    team = torchrun_team()                 # under torchrun: ranks decode chain groups, rank 0 writes
    with joined(team):
        header, chains = read_file(Path(input_file), max_bytes=cap)
        names = header.image_names()

        def check_output():                # before the work
            check_output_dir(out, output_files(names, fmt), force)
            disk = shutil.disk_usage(out if out.is_dir() else _existing_parent(out)).free
            if header.output_bytes > disk:
                raise LimitError(f"this file decodes to {header.output_bytes:,} bytes of pixels; "
                                 f"{out} has {disk:,} bytes free")

        if header.shapes and fmt == "npy":
            raise InputError("this file holds images of several sizes, which one .npy array cannot hold; "
                             "decode it with --format png")
        root_first(team, check_output)
        if model_ref is not None:
            model, config = _load_for_coding(model_ref)
        else:
            model, config = load_checkpoint(locate_model(header.model_name, header.model_sha256))
        check_decodable(header, model, config["weights_sha256"], cap, max_output, trust_v1)
        with team_progress_bar(header.n_images, "decode", quiet, team) as bar:
            pixels, header, report = decompress_parsed(header, chains, model, config["weights_sha256"],
                                                       progress=bar.update, max_memory=cap,
                                                       workers=default_workers(workers, team),
                                                       max_output_bytes=max_output, trust_v1=trust_v1, team=team)
    del chains
    if pixels is None:                     # a torchrun rank other than 0: rank 0 writes and reports
        return
    write_outputs(pixels, names, out, fmt, force)
    if as_json:
        echo_json({"input": str(input_file), "output": str(out), **report})
    else:
        click.echo(f"{header.n_images} images -> {out}/ ({fmt}, verified), "
                   f"{report['decode_images_per_second']:,.0f} images/s")


def _size(value, param):
    if value is None:
        return None
    from bbans_vae.limits import parse_bytes
    try:
        n = parse_bytes(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None
    if n < 1:
        raise click.BadParameter("must be positive", param=param)
    return n


def _model_name(sha_prefix: bytes) -> str | None:
    """The bundled (or $VAECOMPRESS_MODELS) model with these weights, found without torch."""
    from bbans_vae.model_search import model_name_for
    return model_name_for(sha_prefix)


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


@main.command(context_settings=CONTEXT)
@click.argument("input_file", type=click.Path(dir_okay=False), metavar="IN.vae")
@click.option("--json", "as_json", is_flag=True)
def info(input_file, as_json):
    """Show a .vae file's header: model, images, chains, precisions, sizes.

    \b
    Example:
      vaecompress info digits.vae --json
    """
    from bbans_vae.accounting import sizes_of
    from bbans_vae.container import printable, read_file
    from bbans_vae.limits import default_max_memory
    path = Path(input_file)
    # memory: the payload's words (sizes_of reads each chain's valid bits) + O(header); the file size
    # is checked against the header and against half the available RAM before anything is read
    h, chains = read_file(path, max_bytes=default_max_memory())
    size = path.stat().st_size
    res = {"file": printable(str(input_file), 4096), "bytes": size, "format_version": h.version,
           "header_bytes": h.header_bytes,
           "model": printable(h.model_name) if h.model_name else _model_name(h.model_sha256),
           "model_sha256_prefix": h.model_sha256.hex(), "engine": printable(h.engine),
           "coder_path": h.coder_path, "pixel_kind": h.pixel_kind,
           "binary_scale": h.binary_scale, "height": h.height, "width": h.width,
           "channels": h.channels, "dtype": "uint8", "latent_bits": h.latent_bits, "refine_steps": h.refine_steps,
           "importance_samples": h.importance_samples, "cheap_start": h.cheap_start,
           **sizes_of(h, chains, 8 * size), "pixels_sha256_prefix": h.pixels_sha256.hex()}
    del chains
    if res["model"] is None:   # version 2 stores only the hash: named when a bundled/$VAECOMPRESS_MODELS model has it
        del res["model"]
    if h.shapes:
        res["shapes"] = [list(r) for r in h.shapes]
    if h.version == 1:
        res["torch"] = printable(h.torch_version)
    if h.coder_path == "float32" and h.machine is not None:
        res["machine_fingerprint"] = f"{h.machine:08x}"
    if as_json:
        echo_json(res)
    else:
        for k, v in res.items():
            click.echo(f"{k:<22} {v}")


# ----------------------------------------------------------------------------- demo


@main.command(context_settings=CONTEXT)
@click.option("--limit", type=click.IntRange(1, 1000), default=None, help="Use only the first N of the 1,000 images.")
@click.option("--chains", type=click.IntRange(1, 4096), default=None, help="ANS chains (default: automatic).")
@click.option("--json", "as_json", is_flag=True)
@quiet_option
def demo(limit, chains, as_json, quiet):
    """Compress, decode and verify 1,000 bundled MNIST test images; compare with JPEG-XL, WebP,
    PNG, gzip and bz2 on the same images (per image, as one mosaic, as one stream).

    Needs no dataset and no arguments. `make demo` runs this.
    """
    from .demo import run_demo
    from .render import format_demo
    rows = run_demo(limit, chains, lambda n, d: progress_bar(n, d, quiet))
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_demo(rows))
    if not all(r["verified"] for r in rows):
        raise VaeCompressError("a decoded image differs from the original")


# ----------------------------------------------------------------------------- gaps


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(file_okay=False), metavar="RUN_DIR")
@click.option("--refit-epochs", type=click.IntRange(0), default=None,
              help="Epochs of encoder refit on the test images, decoder frozen.  [default: 100; --quick: 20]")
@click.option("--refit-until-converged", is_flag=True,
              help="Refit until the refit -ELBO changes by less than --refit-tol (relative) over the last 10% "
                   "of the epochs (least-squares line through evaluations every 5 epochs; at least 100 epochs), "
                   "at most --refit-max-epochs (instead of --refit-epochs).")
@click.option("--refit-tol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Convergence tolerance of --refit-until-converged.  [default: 1e-4]")
@click.option("--refit-max-epochs", type=click.IntRange(1), default=None,
              help="Cap of --refit-until-converged.  [default: 1000]")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the result as JSON here.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), default=None, help="Also write one CSV row per checkpoint here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Also write the PNG plot here.")
@click.option("--quick", is_flag=True,
              help="Small fast setting (described above); trains RUN_DIR first if it holds no checkpoint.")
@click.option("--iwae", "iwae_k", type=click.IntRange(1), default=None,
              help="Importance samples K for -log p(x).  [default: 1000; --quick: 200]")
@click.option("--local-steps", type=click.IntRange(0), default=None,
              help="Adam steps of the per-image Gaussian q.  [default: 300; --quick: 100]")
@click.option("--test-images", type=click.IntRange(1), default=None,
              help="A seeded random subset of N test images (never the first N).  [default: all; --quick: 500]")
@click.option("--train-eval-size", type=click.IntRange(1), default=None,
              help="A seeded random subset of N of the run's training images.  [default: 10000; --quick: 500]")
@click.option("--split", "split_at", type=click.Choice(["last", "all", "none"]), default=None,
              help="Checkpoints at which to split test -ELBO into -log p(x) + approximation + amortization gaps. "
                   "[default: last]")
@click.option("--split-images", type=click.IntRange(1), default=None,
              help="A seeded random subset of N of the test images for the split.  [default: 1000; --quick: 250]")
@click.option("--samples", type=click.IntRange(1), default=None, help="MC samples per image for every -ELBO.  [default: 10]")
@click.option("--chains", type=click.IntRange(1, 4096), default=None, help="ANS chains of the real bitstreams.  [default: 10]")
@click.option("--latent-bits", type=click.IntRange(4, 14), default=None,
              help="Latent buckets 2^K.  [default: the coder's default]")
@click.option("--coder-path", type=click.Choice(["exact", "float32"]), default=None,
              help="Coder path of the real bitstreams.  [default: the model's default, exact for MLP models]")
@click.option("--no-bitstreams", is_flag=True, help="Skip the real bitstreams (ELBO estimates only).")
@click.option("--no-store", is_flag=True, help="Do not keep or reuse results in RUN_DIR/gaps/.")
@click.option("--epochs", "epochs", default=None, help="Only these checkpoint epochs, e.g. 10,50,100.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--workers", "-j", type=click.IntRange(1, 1024), default=None,
              help="Processes measuring checkpoints at the same time (each stores its checkpoints' results, "
                   "which are then read back: the same numbers as one process). Needs the store (not with "
                   "--no-store).  [default: this machine's cores, at most one per checkpoint]")
@data_dir_option
@quiet_option
def gaps(run_dir, refit_epochs, refit_until_converged, refit_tol, refit_max_epochs, json_out, csv_out, plot_out,
         quick, iwae_k, local_steps, test_images, train_eval_size, split_at, split_images, samples, chains,
         latent_bits, coder_path, no_bitstreams, no_store, epochs, seed, threads, workers, data_dir, quiet):
    """Generalization gaps (EGG = AIGG + GMGG) at every checkpoint of a training run, as -ELBO
    estimates and as sizes of real bitstreams, in bits per dimension, ± standard errors.

    For each checkpoint: -ELBO on the training images (train), on the test images with the
    training encoder (test) and with an encoder refit on the test images with the decoder
    frozen (refit); EGG = test - train, AIGG = test - refit, GMGG = refit - train. Standard
    errors are over images: paired (per-image differences) where the same images are compared
    (AIGG), combined from the two independent ones where train and test differ (EGG, GMGG).
    Columns marked * are real .vae files of the same image sets on the model's default coder
    path (8 x file size), each decoded again and verified; their one-time costs (chain-start
    bits, container header) are also reported apart. The -ELBO above 24 bits per pixel, which
    the coder's 2^-24 probability floor does not charge, is reported too. At the last
    checkpoint (see --split) the test -ELBO is split into -log p(x) (IWAE) + approximation gap
    + amortization gap (per-image optimised q), on a seeded random subset of the test images.

    Every checkpoint's result is stored as soon as it is measured, in RUN_DIR/gaps/<settings
    hash>/epoch_NNNN.json with the refit encoder (safetensors); a refit saves its state every 10
    epochs. Run the same command again after an interruption: finished checkpoints are read
    back, an interrupted refit continues. The whole result also goes there as gaps.json,
    gaps.csv, gaps.md and gaps.png.

    RUN_DIR is a directory made by `vaecompress train ... --save-every S -o RUN_DIR`.

    --quick: if RUN_DIR holds no checkpoint, first trains mlp-paper (3x500, z=10) on 1,000
    mnist-bin training images for 50 epochs, saving every 10; then measures with 20 refit
    epochs, seeded random 500 of the training and 500 of the test images, IWAE K=200 and 100
    local steps on 250 of them, and also writes RUN_DIR/gaps.json, gaps.csv and gaps.png.
    About 70 s of CPU time (one core).

    Runs on --threads torch threads (default 1: the networks are small and the batches are
    100 images, so more threads gain little, and on shared cores they can cost 10x).

    \b
    Examples:
      vaecompress gaps runs/quick --quick
      vaecompress train -d mnist-bin -m mlp-paper -e 500 --train-size 1000 --save-every 50 -o runs/overfit
      vaecompress gaps runs/overfit --refit-until-converged --test-images 2000 --plot gaps.png
      vaecompress gaps runs/seed-full --epochs 10,50,100 --refit-until-converged --split all
    """
    import torch
    from tqdm import tqdm
    from bbans_vae import gaps as G
    from bbans_vae.checkpoint import newest_checkpoint
    from bbans_vae.settings import with_overrides
    from . import render_gaps as R

    rd = Path(run_dir)
    base = G.QUICK_GAPS if quick else G.GapsConfig()
    over = {"refit_epochs": refit_epochs, "iwae_k": iwae_k, "local_steps": local_steps, "test_images": test_images,
            "train_eval_size": train_eval_size, "split": split_at, "split_images": split_images,
            "elbo_samples": samples, "chains": chains, "latent_bits": latent_bits, "coder_path": coder_path,
            "refit_until_converged": refit_until_converged or None, "refit_tol": refit_tol,
            "refit_max_epochs": refit_max_epochs}
    cfg = with_overrides(base, seed=seed, code=not no_bitstreams, epochs=int_list(epochs or None, "--epochs"), **over)
    torch.set_num_threads(threads)
    t0 = time.time()
    if quick and (not rd.exists() or newest_checkpoint(rd) is None):
        q = G.QUICK_TRAIN
        bar = tqdm(total=q.epochs, desc="train (quick)", disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                   leave=False)
        G.quick_train(rd, q, data_dir=data_dir, meta={"command": command_line(), "git_revision": git_revision()},
                      on_epoch=lambda rec: bar.update(1))
        bar.close()
        if not quiet:
            click.echo(f"trained the quick setting ({q.preset}, {q.train_size} {q.dataset} images, {q.epochs} epochs) "
                       f"into {rd} in {time.time() - t0:.0f} s", err=True)
    if quick and not (json_out or csv_out or plot_out):
        json_out, csv_out, plot_out = rd / "gaps.json", rd / "gaps.csv", rd / "gaps.png"

    bar = tqdm(total=1, desc="gaps", disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")
    header_done = []

    def on_stage(done, total, text):
        bar.total = total
        bar.n = done
        bar.set_description(text)
        bar.refresh()

    def on_checkpoint(rec):
        if not header_done:
            bar.write(R.header(cfg.code))
            header_done.append(True)
        bar.write(R.row(rec) + ("  (stored)" if rec.get("from_store") else ""))

    t_measure = time.time()
    if not no_store and default_workers(workers) > 1:
        _gaps_in_workers(rd, cfg, data_dir, default_workers(workers), on_stage)
    res = G.run_gaps(rd, cfg, data_dir=data_dir, on_stage=on_stage, on_checkpoint=on_checkpoint, store=not no_store)
    res["total_seconds"] = time.time() - t_measure  # the workers' wall time too, not only the read-back
    bar.close()
    click.echo(R.notes(res))
    if res["split"]:
        click.echo(R.split_text(res["split"]))
    outputs = [(json_out, R.write_json), (csv_out, R.write_csv), (plot_out, R.plot)]
    if res["store_dir"]:
        sd = Path(res["store_dir"])
        outputs += [(sd / "gaps.json", R.write_json), (sd / "gaps.csv", R.write_csv), (sd / "gaps.png", R.plot)]
        (sd / "gaps.md").write_text(R.markdown(res) + "\n")
    for path, writer in outputs:
        if path:
            writer(res, Path(path))
            click.echo(f"wrote {path}")
    stored = sum(1 for r in res["checkpoints"] if r.get("from_store"))
    click.echo(f"{len(res['checkpoints'])} checkpoints ({stored} read from {res['store_dir']}) in "
               f"{res['total_seconds']:.0f} s (total {time.time() - t0:.0f} s)")


def _gaps_share(run_dir: Path, cfg, data_dir, progress) -> None:
    from bbans_vae import gaps as G
    G.run_gaps(run_dir, cfg, data_dir=data_dir, on_checkpoint=lambda rec: progress(1))


def _gaps_in_workers(run_dir: Path, cfg, data_dir, workers: int, on_stage) -> None:
    """Measure the checkpoints in `workers` processes, contiguous shares each, into the store (the
    split, if "last", by the share holding the last checkpoint); `run_gaps` then reads them back."""
    import dataclasses
    from bbans_vae import gaps as G
    from bbans_vae.ans.chains import chain_groups
    from bbans_vae.ans.workers import run_jobs
    ckpts = G.select_checkpoints(run_dir, cfg.epochs)
    groups = chain_groups(len(ckpts), workers)
    if len(groups) < 2:
        return
    jobs = [functools.partial(_gaps_share, run_dir, dataclasses.replace(
        cfg, epochs=tuple(e for e, _ in ckpts[a:b]),
        split=cfg.split if cfg.split != "last" else ("last" if b == len(ckpts) else "none")), data_dir)
        for a, b in groups]
    done = []

    def progress(n):
        done.append(n)
        on_stage(len(done), len(ckpts) + 1, f"{len(done)} of {len(ckpts)} checkpoints ({len(groups)} workers)")

    run_jobs(jobs, progress)


# ----------------------------------------------------------------------------- bench


@main.command(context_settings=CONTEXT)
@click.option("--dataset", "-d", "datasets", multiple=True,
              help="Dataset to benchmark (repeatable): a name or a path (a folder of PNGs, .npy/.npz, IDX; all "
                   "its images are coded). Default: mnist-bin, mnist-bin-stoch, binarized-mnist, "
                   "mnist, fashion-mnist.  [--quick: mnist-bin, mnist]")
@click.option("--pixels", type=click.Choice(["auto", "binary", "8bit"]), default="auto", show_default=True,
              help="Path datasets: pixel kind (auto: binary if every value is 0/1 or 0/255).")
@click.option("--model", "-m", "model_refs", multiple=True,
              help="Bundled model name or checkpoint/run directory (repeatable). Default: every bundled model; "
                   "each is run on every dataset it fits (same pixel kind and image size).")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="A seeded random N of each dataset's test images (never the first N).  [default: all; --quick: 200]")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write results.json, README.md and plots (PNG) into this directory.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the full result as JSON.")
@click.option("--no-classical", is_flag=True, help="Skip the classical codecs (gzip ... JPEG-XL).")
@click.option("--quick", is_flag=True, help="Small fast setting (about a minute): see below.")
@click.option("--chains", "chains_list", default=None,
              help="Chain counts of the speed sweep, e.g. 1,4,16,64 ('' to skip).  [default: 1,4,16,64; --quick: 1,4,16]")
@click.option("--jxl-effort", type=click.IntRange(1, 10), default=None,
              help="JPEG-XL effort.  [default: the library's maximum (10 for libjxl >= 0.10); --quick: 7]")
@click.option("--single-images", type=click.IntRange(1), default=None,
              help="Images coded one file each in the `single` protocol.  [default: 200; --quick: 50]")
@click.option("--refine-steps", "refine_steps", multiple=True, type=click.IntRange(1, 1000),
              help="Also code each full set in one file with K steps of posterior refinement (protocol "
                   "`all+refineK`; repeatable). Slow: about 25x the plain encode time at K=10 on a ctx model.")
@click.option("--workers", "-j", type=click.IntRange(1, 1024), default=None,
              help="Processes coding the BB-ANS files: one file's chain groups, or several files at once "
                   "(sizes and verdicts are the same for any number; speeds stay per file). "
                   "Default: this machine's cores.")
@data_dir_option
@quiet_option
def bench(datasets, pixels, model_refs, limit, out_dir, json_out, no_classical, quick, chains_list, jxl_effort,
          single_images, refine_steps, workers, data_dir, quiet):
    """Benchmark BB-ANS against classical lossless codecs on the same test images; print the
    headline table (our best bpd vs the best classical codec per dataset).

    Classical codecs (gzip, bz2, xz, zstd, brotli, PNG, WebP, JPEG-XL, JPEG-LS) run on the whole set
    as one stream, per image and as one mosaic. BB-ANS runs with every fitting model in three
    protocols: `all` (one file), `chunks100` (one file per 100 images, 1 chain each) and `single`
    (one file per image, a seeded random 200 images: shows the one-time chain-start cost). Every result is
    decoded and checked pixel for pixel. Also: a speed sweep over chain counts with the main binary
    model (images/s encode and decode vs the bare network forward passes) and the rate of one file
    holding n images (n = 1, 10, 100, 1000, 10000; nested seeded random subsets).

    --quick: mnist-bin and mnist, a seeded random 200 images, JPEG-XL effort 7, sweep 1,4,16 chains, 50
    single-image files.

    \b
    Examples:
      vaecompress bench --quick
      vaecompress bench -d mnist-bin --limit 1000 --json bench.json
      vaecompress bench --model mnist-bin --model runs/paper -d mnist-bin -d binarized-mnist -o out/
      vaecompress bench -m mnist-ctx -d mnist --no-classical --refine-steps 10
      vaecompress bench -o benchmarks/results/bench      # the full run (see benchmarks/run_all.sh)
    """
    from tqdm import tqdm
    from bbans_vae import bench as B
    from bbans_vae.settings import with_overrides
    from .render import format_headline, write_json, write_results

    s = with_overrides(B.QUICK if quick else B.BenchSettings(), datasets=datasets or None, limit=limit,
                       jxl_effort=jxl_effort, single_images=single_images,
                       chains_list=int_list(chains_list, "--chains"))
    bar = tqdm(total=1, desc="bench", disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False,
               bar_format="{desc:<60.60} {n_fmt}/{total_fmt} |{bar}| {elapsed}")

    def on_progress(done, total, text):
        bar.total = total
        bar.n = done
        bar.set_description(text)
        bar.refresh()

    res = B.run_bench(s.datasets, list(model_refs) if model_refs else None, limit=s.limit,
                      chains_list=s.chains_list, classical=not no_classical, effort=s.jxl_effort, progress=on_progress,
                      single_images=s.single_images, data_dir=data_dir, command=command_line(),
                      refine_steps=refine_steps, pixels=None if pixels == "auto" else pixels,
                      workers=default_workers(workers))
    bar.close()
    click.echo(format_headline(res))
    if out_dir:
        for p in write_results(res, out_dir):
            click.echo(f"wrote {p}")
    if json_out:
        click.echo(f"wrote {write_json(res, json_out)}")
    click.echo(f"bench finished in {res['elapsed_seconds']:.0f} s")
    if not res["all_verified"]:
        raise VaeCompressError("a decoded image differs from the original (see the rows marked NOT VERIFIED)")


if __name__ == "__main__":  # keep last: every command above must be registered first
    main()
