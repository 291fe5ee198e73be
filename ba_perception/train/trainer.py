"""`ba-perception train`: train the monocular 3D detector on the synthetic world (CPU or CUDA, resumable)."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ba_perception.core.detection.decode import sample_descriptors
from ba_perception.core.detection.model import DetectorConfig, ModelError, MonoDetector, save_checkpoint
from ba_perception.train.data import CachedSplit, SplitSpec, TrainObjectFilter, build_split, frame_targets
from ba_perception.train.losses import embedding_loss, focal_loss, info_nce, regression_losses

LOSS_WEIGHTS = {"heatmap": 1.0, "offset": 1.0, "ltrb": 1.0, "box_iou": 1.0, "depth": 1.0, "size": 1.0, "alpha": 1.0,
                "features": 0.5, "embedding": 0.2}


class TrainError(RuntimeError):
    """Raised for an unusable training setup (bad resume file, empty split)."""


@dataclass
class TrainConfig:
    """All settings of a training run (stored in every checkpoint)."""

    input_hw: tuple[int, int] = (192, 640)
    batch_size: int = 8
    lr: float = 1.5e-3
    weight_decay: float = 1e-4
    iterations: int = 3000
    warmup: int = 100
    val_every: int = 500
    val_frames: int = 80
    seed: int = 0
    device: str = "auto"
    pretrained: bool = True
    freeze_stem: bool = True
    corr_per_pair: int = 128
    flip: bool = True
    train_split: dict = field(default_factory=lambda: asdict(SplitSpec("train")))
    val_split: dict = field(default_factory=lambda: asdict(SplitSpec("val", sequences=4, pairs_per_sequence=10)))


def _spec(d: dict) -> SplitSpec:
    d = dict(d)
    d["presets"] = tuple(d.get("presets", ()) or SplitSpec().presets)
    return SplitSpec(**d)


def _lr_at(cfg: TrainConfig, it: int) -> float:
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    p = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def _batch(split: CachedSplit, rng: np.random.Generator, cfg: TrainConfig, filt: TrainObjectFilter, device):
    """A batch of B frames made of B/2 random frames and their pair partners, with targets."""
    half = max(1, cfg.batch_size // 2)
    anchors = rng.choice(len(split), half, replace=len(split) < half)
    idx, flips = [], []
    nw = split.net_hw[1]
    pre = split.preprocess
    can_flip = cfg.flip and (nw - pre.resized_hw[1]) % 2 == 0
    for a in anchors:
        f = bool(can_flip and rng.random() < 0.5)
        idx += [int(a), int(split.partner[a])]
        flips += [f, f]
    imgs = torch.from_numpy(split.images[idx]).permute(0, 3, 1, 2).float() / 255.0
    for j, f in enumerate(flips):
        if f:
            imgs[j] = imgs[j].flip(-1)
    # photometric jitter: brightness / contrast per image
    b = torch.from_numpy(rng.uniform(-0.1, 0.1, (len(idx), 1, 1, 1))).float()
    c = torch.from_numpy(rng.uniform(0.8, 1.2, (len(idx), 1, 1, 1))).float()
    mean = imgs.mean(dim=(1, 2, 3), keepdim=True)
    imgs = ((imgs - mean) * c + mean + b).clamp(0, 1)
    tg = [frame_targets(split, i, f, filt) for i, f in zip(idx, flips)]
    corr = []
    for j in range(0, len(idx), 2):
        rows = split.corr_of(idx[j])
        if len(rows) > cfg.corr_per_pair:
            rows = rng.choice(rows, cfg.corr_per_pair, replace=False)
        ua = torch.from_numpy(split.corr_uv_a[rows]).float()
        ub = torch.from_numpy(split.corr_uv_b[rows]).float()
        if flips[j]:
            ua[:, 0] = nw - 1 - ua[:, 0]
            ub[:, 0] = nw - 1 - ub[:, 0]
        corr.append((ua, ub))
    return imgs.to(device), tg, corr


def compute_losses(model: MonoDetector, imgs, tg, corr, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All loss terms of one batch (unweighted)."""
    out = model.forward_logits(imgs)
    dev = imgs.device
    B, C, h, w = out["heatmap_logits"].shape
    heat_t = torch.stack([t["heatmap"] for t in tg]).to(dev)
    ign = torch.stack([t["ignore"] for t in tg]).to(dev)
    losses = {"heatmap": focal_loss(out["heatmap_logits"], heat_t, ign)}
    reg = out["regression"].flatten(2)  # (B, 13, h*w)
    emb = out["embedding"].flatten(2)
    preds, targets, weights, embs = [], [], [], []
    for bi, t in enumerate(tg):
        preds.append(reg[bi, :, t["area_ind"].to(dev)].t())
        targets.append(t["area_reg"].to(dev))
        weights.append(t["area_weight"].to(dev))
        embs.append(emb[bi, :, t["ind"].to(dev)].t())
    losses.update(regression_losses(torch.cat(preds), torch.cat(targets), torch.cat(weights)))
    e_l, f_l = [], []
    feats = out["features"]
    for j in range(0, B, 2):
        e_l.append(embedding_loss(embs[j], tg[j]["track"].to(dev), embs[j + 1], tg[j + 1]["track"].to(dev)))
        ua, ub = corr[j // 2]
        if len(ua) >= 2:
            bidx = torch.tensor([j, j + 1], device=dev)
            d = sample_descriptors(feats, bidx, torch.stack([ua, ub]).to(dev), cfg.input_hw)
            f_l.append(info_nce(d[0], d[1]))
    zero = feats.sum() * 0.0
    losses["embedding"] = torch.stack(e_l).mean() if e_l else zero
    losses["features"] = torch.stack(f_l).mean() if f_l else zero
    return losses


def _validate(model: MonoDetector, val: CachedSplit, cfg: TrainConfig, device) -> dict:
    from ba_perception.eval.detection_eval import evaluate_on_split

    model.eval()
    res = evaluate_on_split(lambda x: model(x.to(device)), val, batch_size=8, max_frames=cfg.val_frames)
    model.train()
    car = res["classes"]["car"]
    out = {
        "car_ap3d@0.5": car["ap3d_r40@0.5"], "car_ap3d@0.7": car["ap3d_r40@0.7"],
        "car_apbev@0.5": car["apbev_r40@0.5"], "car_ap2d@0.7": car["ap2d_r40@0.7"],
        "car_depth_rel_median_40m": car["errors"]["within_40m"]["depth_rel_median"],
        "car_yaw_median_deg": car["errors"]["yaw_abs_median_deg"],
        "ped_ap3d@0.25": res["classes"]["pedestrian"]["ap3d_r40@0.25"],
        "cyc_ap3d@0.25": res["classes"]["cyclist"]["ap3d_r40@0.25"],
    }
    return {k: float(v) for k, v in out.items()}  # plain floats: checkpoints load with weights_only=True


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, cache_dir: str | Path = "data/detector",
          max_minutes: float | None = None, log=print) -> Path:
    """Train (or resume) a detector; writes ``last.pt``, ``best.pt`` and ``history.jsonl`` in ``out_dir``.

    Returns:
        Path of the best checkpoint (by validation car AP3D@0.5, else the last one).

    Raises:
        TrainError: resume requested but the checkpoint is unusable, or an empty split.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    model = MonoDetector(DetectorConfig(input_hw=(int(cfg.input_hw[0]), int(cfg.input_hw[1]))), pretrained=cfg.pretrained).to(device)
    if cfg.freeze_stem:
        for p in [*model.backbone._conv_stem.parameters(), *model.backbone._bn0.parameters(), *model.backbone._blocks[0].parameters()]:
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best, history = 0, -1.0, []
    last = out_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise TrainError(f"--resume: {last} does not exist")
        try:
            ck = torch.load(last, map_location=device, weights_only=False)
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
        except (RuntimeError, KeyError, OSError, EOFError) as err:
            raise TrainError(f"--resume: cannot load {last}: {err}") from err
        start, best = int(ck["iteration"]), float(ck.get("best", -1.0))
        log(f"resumed from {last} at iteration {start}")
    log("building / loading cached world splits ...")
    train_split = build_split(_spec(cfg.train_split), cfg.input_hw, cache_dir)
    val_split = build_split(_spec(cfg.val_split), cfg.input_hw, cache_dir)
    if len(train_split) == 0:
        raise TrainError("empty training split")
    log(f"train {len(train_split)} frames, val {len(val_split)} frames, device {device}, threads {torch.get_num_threads()}")
    filt = TrainObjectFilter()
    model.train()
    t_start = time.time()
    t_log, it_log = time.time(), start
    meta = {"train_config": {**asdict(cfg), "input_hw": list(cfg.input_hw)}}
    it = start
    while it < cfg.iterations:
        rng = np.random.default_rng([cfg.seed, it])  # sampling depends only on (seed, iteration): resumable
        imgs, tg, corr = _batch(train_split, rng, cfg, filt, device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, it)
        losses = compute_losses(model, imgs, tg, corr, cfg)
        total = torch.stack([LOSS_WEIGHTS[k] * v for k, v in losses.items()]).sum()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        it += 1
        if it % 20 == 0 or it == cfg.iterations:
            dt = time.time() - t_log
            rate = (it - it_log) / max(dt, 1e-9)
            eta = (cfg.iterations - it) / max(rate, 1e-9)
            parts = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            log(f"[{it}/{cfg.iterations}] loss {total.item():.3f} ({parts}) lr {_lr_at(cfg, it):.2e} "
                f"{rate * cfg.batch_size:.1f} img/s eta {eta / 60:.1f} min")
            t_log, it_log = time.time(), it
        out_of_time = max_minutes is not None and (time.time() - t_start) > 60 * max_minutes
        if it % cfg.val_every == 0 or it == cfg.iterations or out_of_time:
            v = _validate(model, val_split, cfg, device)
            rec = {"iteration": it, "minutes": (time.time() - t_start) / 60, "loss": total.item(), **v}
            history.append(rec)
            with open(out_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            log("val " + " ".join(f"{k} {val:.3f}" if isinstance(val, float) else f"{k} {val}" for k, val in rec.items()))
            score = v["car_ap3d@0.5"] if not math.isnan(v["car_ap3d@0.5"]) else -1.0
            ck_meta = {**meta, "iteration": it, "val": v}
            torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                        "iteration": it, "best": max(best, score), "meta": ck_meta}, last.with_suffix(".tmp"))
            last.with_suffix(".tmp").replace(last)
            if score >= best:
                best = score
                save_checkpoint(out_dir / "best.pt", model, {"meta": ck_meta})
        if out_of_time:
            log(f"stopping after {max_minutes} min at iteration {it} (resume with --resume)")
            break
    return out_dir / "best.pt" if (out_dir / "best.pt").is_file() else last


def _hw(s: str) -> tuple[int, int]:
    h, w = s.lower().split("x")
    return int(h), int(w)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `ba-perception train`."""
    d = TrainConfig()
    parser.add_argument("--out-dir", default="out/train/detector", help="checkpoints and history")
    parser.add_argument("--iterations", type=int, default=d.iterations)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--input-hw", type=_hw, default=d.input_hw, help="network input HxW, e.g. 192x640")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sequences", type=int, default=40)
    parser.add_argument("--pairs-per-sequence", type=int, default=20)
    parser.add_argument("--val-sequences", type=int, default=4)
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--val-frames", type=int, default=d.val_frames)
    parser.add_argument("--cache-dir", default="data/detector", help="rendered split cache")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this wall time")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    parser.add_argument("--no-pretrained", action="store_true", help="random backbone init")


def run(args: argparse.Namespace) -> int:
    """Run training from the command line."""
    from ba_perception.cli import CommandError
    from ba_perception.train.data import DataError

    torch.set_num_threads(max(1, args.threads))
    cfg = TrainConfig(
        input_hw=args.input_hw, batch_size=args.batch_size, lr=args.lr, iterations=args.iterations, seed=args.seed,
        device=args.device, pretrained=not args.no_pretrained, val_every=args.val_every, val_frames=args.val_frames,
        train_split=asdict(SplitSpec("train", sequences=args.train_sequences, pairs_per_sequence=args.pairs_per_sequence)),
        val_split=asdict(SplitSpec("val", sequences=args.val_sequences, pairs_per_sequence=10)),
    )
    try:
        best = train(cfg, args.out_dir, args.resume, args.cache_dir, args.max_minutes, log=lambda s: print(s, flush=True))
    except (TrainError, DataError, ModelError) as err:
        raise CommandError(str(err)) from err
    print(f"best checkpoint: {best}")
    return 0
