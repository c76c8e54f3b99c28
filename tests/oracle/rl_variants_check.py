#!/usr/bin/env python3
"""tests/oracle/rl_variants_check.py — an independent PyTorch (float64) implementation of every advantage
estimator, policy loss and loss aggregation of the updater (docs/ARCHITECTURE.md "The RL step"), written
from those formulas, not from updater/rl.c.

    rl_variants_check.py CASES.json

CASES.json holds cases written by tests/updater/test_rl.c: the inputs (rewards per group, log pi, log mu,
log pi_prox, masks) and the configuration, with what the C code computed: the advantages and the
per-token coefficients dL/dlog pi. Here the advantages are recomputed from the rewards, the loss is
built as a function of log pi, and autograd gives dL/dlog pi. Prints one line per case that disagrees
and a summary; exits 1 on any disagreement beyond 1e-6 (relative to max(1, |value|)).
"""
import json
import sys

import torch

EPS = 1e-6


def advantages(rewards, ks, estimator, scale):
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = torch.zeros_like(r)
    keep = []
    off = 0
    batch_std = r.std(unbiased=True) if len(r) > 1 else torch.tensor(0.0, dtype=torch.float64)
    for k in ks:
        g = r[off:off + k]
        if k < 2 or float(g.max() - g.min()) <= 1e-6:
            keep.append(False)
            off += k
            continue
        keep.append(True)
        mean = g.mean()
        if estimator == "rloo":
            a = g - (g.sum() - g) / (k - 1)
        elif estimator == "grpo":
            d = {"group": g.std(unbiased=True) + EPS, "batch": batch_std + EPS, "none": 1.0}[scale]
            a = (g - mean) / d
        else:  # dr_grpo, reinforce_pp
            a = g - mean
        adv[off:off + k] = a
        off += k
    if estimator == "reinforce_pp":
        sel = []
        off = 0
        for k, kp in zip(ks, keep):
            if kp:
                sel.extend(range(off, off + k))
            off += k
        if sel:
            v = adv[sel]
            sd = v.std(unbiased=True) if len(sel) > 1 else torch.tensor(0.0, dtype=torch.float64)
            adv[sel] = (v - v.mean()) / (sd + EPS)
    return adv, keep


def loss_of(logp, logmu, logprox, mask, A, c):
    """L(log pi) = -J for one micro-batch (B, T), with the update's denominators c['N'], c['G'], c['L']."""
    lo, hi = 1.0 - c["clip_low"], 1.0 + c["clip_high"]
    lens = mask.sum(dim=1)
    agg = c["agg"]
    w_tok = {
        "token_mean": torch.full_like(lens, 1.0 / c["N"]),
        "seq_mean_token_sum": torch.full_like(lens, 1.0 / c["G"]),
        "seq_mean_token_mean": 1.0 / (c["G"] * torch.clamp(lens, min=1.0)),
        "seq_mean_token_sum_norm": torch.full_like(lens, 1.0 / (c["G"] * c["L"])),
    }[agg]  # (B) weight of each token of the sequence
    Ab = A[:, None]
    loss = c["loss"]
    if loss == "gspo":
        d = ((logp - logmu) * mask).sum(dim=1) / torch.clamp(lens, min=1.0)
        s = torch.exp(d)
        m = torch.minimum(s * A, torch.clamp(s, lo, hi) * A)
        J = (w_tok * lens * m * (lens > 0)).sum()
        return -J
    rho = torch.exp(logp - logmu)
    if loss == "tis":
        term = torch.clamp(rho.detach(), max=c["is_cap"]) * Ab * logp
    elif loss == "cispo":
        term = torch.clamp(rho.detach(), lo, hi) * Ab * logp
    elif loss == "ppo_clip":
        m = torch.minimum(rho * Ab, torch.clamp(rho, lo, hi) * Ab)
        if c["clip_c"] > 0:
            m = torch.where(Ab < 0, torch.maximum(m, c["clip_c"] * Ab), m)
        term = m
    elif loss == "decoupled_ppo":
        w = torch.exp(logprox - logmu).detach()
        r = torch.exp(logp - logprox.detach())
        m = torch.minimum(r * Ab, torch.clamp(r, lo, hi) * Ab)
        term = torch.where(w <= c["behav_cap"], w * m, torch.zeros_like(m))
    else:
        raise ValueError(loss)
    return -(term * mask * w_tok[:, None]).sum()


def main():
    cases = json.load(open(sys.argv[1]))
    bad = 0
    worst = 0.0
    for n, case in enumerate(cases):
        c = case["cfg"]
        adv, keep = advantages(case["rewards"], case["k"], c["advantage"], c["scale"])
        for i, (x, y) in enumerate(zip(adv.tolist(), case["adv"])):
            e = abs(x - y) / max(1.0, abs(x))
            worst = max(worst, e)
            if e > 1e-5:  # float32 advantages in the C code
                print(f"case {n} {c}: advantage {i}: torch {x:.9g}, C {y:.9g}")
                bad += 1
        if [int(k) for k in keep] != case["keep"]:
            print(f"case {n} {c}: keep torch {keep}, C {case['keep']}")
            bad += 1
        B, T = case["B"], case["T"]
        t = lambda key: torch.tensor(case[key], dtype=torch.float64).reshape(B, T)
        logp = t("logp").requires_grad_(True)
        logmu, logprox, mask = t("logmu"), t("logprox"), t("mask")
        # the C coefficients were computed with the C advantages (float32): use the same values
        A = torch.tensor(case["adv_rows"], dtype=torch.float64)
        L = loss_of(logp, logmu, logprox, mask, A, c)
        (g,) = torch.autograd.grad(L, logp)
        coef = torch.tensor(case["coef"], dtype=torch.float64).reshape(B, T)
        for b in range(B):
            for tt in range(T):
                x, y = float(g[b, tt]), float(coef[b, tt])
                e = abs(x - y) / max(1.0, abs(x))
                worst = max(worst, e)
                if e > 1e-6:
                    print(f"case {n} {c}: dL/dlogp[{b},{tt}] torch {x:.9g}, C {y:.9g}")
                    bad += 1
        # the reported loss: the objective itself, or for tis and cispo the surrogate w A log pi
        lv = float(L)
        e = abs(lv - case["loss"]) / max(1.0, abs(lv))
        worst = max(worst, e)
        if e > 1e-6:
            print(f"case {n} {c}: loss torch {lv:.9g}, C {case['loss']:.9g}")
            bad += 1
    print(f"rl_variants_check: {len(cases)} cases, {bad} disagreements, largest relative difference {worst:.3g}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
