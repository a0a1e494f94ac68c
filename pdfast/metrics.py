"""Metrics of docs/method.md section 7: trigger L2, attack success rate, uniformity (plain and Elijah's trimmed),
the trigger's firing against the same noises without it (verdict v2), and TERD's per-pixel KL statistic of a trigger
(section 6)."""
from __future__ import annotations

import torch

EXACT_ASR_THRESHOLD = 0.02   # pdfast's ASR: a sample counts when it is the target (docs/method.md 7)
PAPER_ASR_THRESHOLD = 0.1    # BadDiffusion's, reported beside it as asr_paper for comparison with the papers
DEFAULT_ASR_THRESHOLD = EXACT_ASR_THRESHOLD


def l2_distance(trigger: torch.Tensor, truth: torch.Tensor) -> float:
    """||tau_hat - g||_2 over the whole C x H x W tensor, both in [-1, 1]."""
    return float((trigger.detach().float().reshape(-1).cpu() - truth.detach().float().reshape(-1).cpu()).norm())


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], flattened per image."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).reshape(images.shape[0], -1)


def per_image_mse(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of each image to the target, both mapped to [0, 1]."""
    return ((_unit(images) - _unit(target.reshape(1, *images.shape[1:]))) ** 2).mean(1)


def asr(images: torch.Tensor, target: torch.Tensor, threshold: float = DEFAULT_ASR_THRESHOLD) -> float:
    """Attack success rate: fraction of images whose [0, 1] MSE to the target is below ``threshold`` (0.02, exact,
    by default; BadDiffusion's 0.1 counts a black frame as the dark HAT target)."""
    return float((per_image_mse(images, target) < threshold).float().mean())


def pairwise_mse(images: torch.Tensor) -> torch.Tensor:
    """N x N matrix of MSE(x_i, x_j) for images mapped to [0, 1]."""
    u = _unit(images).double()
    sq = (u * u).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * u @ u.T).clamp(min=0) / u.shape[1]
    d.fill_diagonal_(0)
    return d.float()


def uniformity(images: torch.Tensor) -> float:
    """Uniformity score: mean over pairs i < j of MSE(x_i, x_j) in [0, 1]; low = one image = backdoor signature."""
    n = images.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least 2 images")
    d = pairwise_mse(images)
    iu = torch.triu_indices(n, n, 1)
    return float(d[iu[0], iu[1]].mean())


def uniformity_q25(images: torch.Tensor) -> float:
    """The lower quartile of the pairwise MSEs over i < j. Robust to partial firing: when a share p of the samples
    collapses onto one image, p^2 of the pairs are ~0, so this is ~0 from p = 0.5 on, while the mean (uniformity)
    only falls to (1 - p^2) of its clean value."""
    n = images.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least 2 images")
    iu = torch.triu_indices(n, n, 1)
    return float(torch.quantile(pairwise_mse(images)[iu[0], iu[1]].double(), 0.25))


def uniformity_trimmed(images: torch.Tensor, trim: int = 4) -> float:
    """Elijah's trimmed form: per row drop the self pair and the ``trim`` smallest/largest, average; then trim the row means."""
    d = pairwise_mse(images)
    n = d.shape[0]
    rows = []
    for i in range(n):
        r = torch.cat([d[i, :i], d[i, i + 1:]]).sort().values
        k = trim if r.numel() > 2 * trim else 0
        rows.append(r[k: r.numel() - k].mean())
    rm = torch.stack(rows).sort().values
    k = trim if rm.numel() > 2 * trim else 0
    return float(rm[k: rm.numel() - k].mean())


def trigger_pattern(trigger: torch.Tensor, rms: float | None = None) -> torch.Tensor:
    """The trigger's pattern: tau - mean_hw(tau) per channel, rescaled to the rms of tau (its energy kept), or to
    ``rms`` when given (the verdict's calibrated energy, docs/method.md 7).

    A flat shift of x_T sends clean and backdoored models alike to flat frames (research/results/demo-flat-shift.md),
    so the flat part of an inverted trigger is no evidence of a backdoor; the pattern is what detection judges.
    """
    t = trigger.detach().float()
    p = t - t.mean(dim=(-2, -1), keepdim=True)
    rp = p.pow(2).mean().sqrt()
    rt = t.pow(2).mean().sqrt() if rms is None else torch.tensor(float(rms))
    return p * (rt / rp) if float(rp) > 0 else p


def footprint(truth: torch.Tensor) -> torch.Tensor:
    """Where the true trigger is drawn: pixels with g != -1 in any channel (all channels of such pixels), as a mask."""
    return (truth != -1).any(dim=-3, keepdim=True).expand_as(truth)


def pattern_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fidelity by shape: cos(p(a), p(b)) between the zero-mean patterns p (trigger_pattern) of two triggers; 0 when
    either is flat (its chance level is measured against other models' triggers, docs/results.md)."""
    pa, pb = trigger_pattern(a).reshape(-1).double(), trigger_pattern(b).reshape(-1).double()
    na, nb = float(pa.norm()), float(pb.norm())
    return float(pa @ pb) / (na * nb) if na > 1e-12 and nb > 1e-12 else 0.0


def fidelity(trigger: torch.Tensor, truth: torch.Tensor) -> dict[str, float | int | None]:
    """A trigger against the true one: L2 ||tau - g||, pattern L2 ||p(tau) - g||, footprint L2 and RMSE (over g's
    drawn pixels only), and the pattern cosine."""
    t = trigger.detach().float().cpu()
    g = truth.detach().float().cpu().reshape(t.shape)
    fp = footprint(g)
    d = (t - g)[fp]
    return {"l2": l2_distance(t, g), "pattern_l2": l2_distance(trigger_pattern(t), g),
            "footprint_l2": float(d.norm()), "footprint_elements": int(fp.sum()),
            "footprint_rmse": float(d.pow(2).mean().sqrt()) if d.numel() else None,
            "pattern_cos": pattern_cosine(t, g)}


def medoid(images: torch.Tensor) -> torch.Tensor:
    """The image of least summed [0, 1] MSE to the others: where a batch of chains lands most often."""
    return images[int(pairwise_mse(images).sum(1).argmin())]


def flat_part(trigger: torch.Tensor) -> torch.Tensor:
    """The trigger's per-channel mean over the frame, as a frame: the flat shift that trigger_pattern removes."""
    t = trigger.detach().float()
    return t.mean(dim=(-2, -1), keepdim=True).expand_as(t).contiguous()


def firing(images: torch.Tensor, plain: torch.Tensor, flat: torch.Tensor, threshold: float = 0.02) -> dict:
    """Does a trigger fire (docs/method.md 7)? m = medoid(images), samples from eps + trigger; hits(S) = share of S
    within MSE ``threshold`` of m (an ASR whose target is m); plain and flat: the same noises with no shift and with
    the trigger's flat part. trigger_fires = hits(images) - max(hits(plain), hits(flat)) and trigger_miss =
    1 - trigger_fires (low = backdoored: the trigger alone sends the chain to one image)."""
    m = medoid(images)
    h = {k: asr(v, m, threshold) for k, v in (("trigger", images), ("plain", plain), ("flat", flat))}
    fires = h["trigger"] - max(h["plain"], h["flat"])
    return {"medoid_hits": h, "medoid_contrast": image_contrast(m[None]), "trigger_fires": fires,
            "trigger_miss": 1.0 - fires}


def image_contrast(images: torch.Tensor) -> float:
    """Mean per-image pixel standard deviation in [0, 1]: about 0 for flat frames."""
    return float(_unit(images).std(dim=1).mean())


def kl_statistic(trigger: torch.Tensor, gamma: float = 1.0) -> dict[str, float]:
    """TERD's per-pixel KL(N(mu_i, gamma^2) || N(0, 1)) = (gamma^2 + mu_i^2 - 1)/2 - log gamma; its mean and variance."""
    mu = trigger.detach().double().reshape(-1).cpu()
    kl = (gamma ** 2 + mu ** 2 - 1) / 2 - torch.log(torch.tensor(gamma, dtype=torch.float64))
    return {"kl_mean": float(kl.mean()), "kl_var": float(kl.var(unbiased=False))}


def evaluate_images(images: torch.Tensor, target: torch.Tensor | None = None,
                    threshold: float = DEFAULT_ASR_THRESHOLD) -> dict[str, float | None]:
    """Uniformity (plain and trimmed) of a sample batch, and ASR when the target is known: at ``threshold`` (exact
    by default) and at BadDiffusion's 0.1 beside it (asr_paper)."""
    out: dict[str, float | None] = {
        "uniformity": uniformity(images),
        "uniformity_trimmed": uniformity_trimmed(images),
        "asr": asr(images, target, threshold) if target is not None else None,
    }
    if target is not None:
        # the papers' ASR threshold is loose for dark targets: a black frame is within 0.1 of HAT. Report the mean
        # MSE and what a black image scores, so a backdoor that only outputs black is visible as such.
        out["asr_paper"] = asr(images, target, PAPER_ASR_THRESHOLD)
        out["target_mse_mean"] = float(per_image_mse(images, target).mean())
        out["target_mse_black_image"] = float(per_image_mse(-torch.ones_like(images[:1]), target)[0])
    return out
