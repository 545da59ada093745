"""The remaining baselines' losses (NST, VID, KDSVD, AB, FT, FSP, OFD, HCL) against
(a) independent float64 hand computations, value and gradient, and (b) the reference code's
own figures on seeded inputs, recorded by ``benchmarks/reference_losses.py`` under
``tests/data/reference_losses`` (the reference code itself is not needed here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mhkd import losses
from mhkd.methods.ofd import connector, ofd_stages
from mhkd.methods.reviewkd import Reviewer
from mhkd.methods.vid import VIDRegressor, vid_stage

TOL = {"rtol": 1e-5, "atol": 1e-6}
REFERENCE = Path(__file__).parent / "data" / "reference_losses"


def _leaves(seed: int, shapes, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g) * scale).requires_grad_(True) for s in shapes]


def check(loss_fn, reference_fn, s_shapes, t_shapes, scale=1.0, tol=TOL):
    """Value and student gradients of ``loss_fn`` (float32) vs ``reference_fn`` (float64)."""
    s, t = _leaves(1, s_shapes, scale), _leaves(2, t_shapes, scale)
    value = loss_fn(s, t)
    value.backward()
    assert value.dtype == torch.float32 and value.dim() == 0
    assert all(x.grad is None for x in t), "the teacher's input must get no gradient"
    s64 = [x.detach().double().requires_grad_(True) for x in s]
    ref = reference_fn(s64, [x.detach().double() for x in t])
    ref.backward()
    torch.testing.assert_close(value.detach().double(), ref.detach(), **tol)
    for a, b in zip(s, s64, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad, **tol)
    return value


def pool_to(x, size):
    """Average pooling of a map to an exact divisor size by explicit block means."""
    b, c, h, w = x.shape
    kh, kw = h // size[0], w // size[1]
    return x.reshape(b, c, size[0], kh, size[1], kw).mean(dim=(3, 5))


def smaller(a, b):
    if a.shape[-1] > b.shape[-1]:
        return pool_to(a, b.shape[-2:]), b
    if a.shape[-1] < b.shape[-1]:
        return a, pool_to(b, a.shape[-2:])
    return a, b


# ---- NST ---------------------------------------------------------------------------------------
def ref_nst(s_list, t_list):
    total = 0
    for s, t in zip(s_list, t_list, strict=True):
        s, t = smaller(s, t)
        s = s.flatten(2) / s.flatten(2).norm(dim=2, keepdim=True)
        t = t.flatten(2) / t.flatten(2).norm(dim=2, keepdim=True)

        def k(a, b):  # mean over samples and channel pairs of (a_i . b_j)^2
            vals = [
                (a[n, i] @ b[n, j]) ** 2
                for n in range(a.shape[0])
                for i in range(a.shape[1])
                for j in range(b.shape[1])
            ]
            return sum(vals) / len(vals)

        total = total + k(t, t) + k(s, s) - 2 * k(s, t)
    return total


def test_nst_matches_hand_computation():
    check(
        lambda s, t: sum(losses.nst(a, b) for a, b in zip(s, t, strict=True)),
        ref_nst,
        [(2, 3, 4, 4), (2, 2, 2, 2)],
        [(2, 2, 2, 2), (2, 3, 2, 2)],
    )


# ---- VID ---------------------------------------------------------------------------------------
def test_vid_matches_hand_computation():
    log_scale = torch.tensor([0.3, -1.0, 2.0])

    def ref(s, t):
        total, n = 0, 0
        for c in range(3):
            var = math.log(1 + math.exp(float(log_scale[c]))) + 1e-5
            for x in (s[0][:, c] - t[0][:, c]).flatten():
                total = total + 0.5 * (x * x / var + math.log(var))
                n += 1
        return total / n

    check(
        lambda s, t: losses.vid(s[0], t[0], log_scale),
        ref,
        [(2, 3, 2, 2)],
        [(2, 3, 2, 2)],
    )


def test_vid_log_scale_starts_at_the_initial_variance():
    var = losses.vid_variance(losses.vid_log_scale_init(4, 5.0))
    torch.testing.assert_close(var, torch.full((4,), 5.0))


# ---- KDSVD -------------------------------------------------------------------------------------
def ref_kdsvd(s_list, t_list, k=1):
    """Per sample, with numpy-free float64 linear algebra and explicit channel loops."""
    bsz = s_list[0].shape[0]
    total, prev = 0, None
    for f_s, f_t in zip(s_list, t_list, strict=True):
        vs, vt = [], []
        for n in range(bsz):
            cols = []
            for f, m in ((f_t[n], k), (f_s[n], k + 3)):
                x = f.flatten(1).t()  # (HW, C)
                _, sv, vh = torch.linalg.svd(x, full_matrices=False)
                v = vh.t()[:, :m]
                cols.append((v / v.norm(dim=0, keepdim=True), sv[:m] / sv[:m].norm()))
            (v_t, s_t), (v_s, _) = cols
            aligned = []
            for j in range(k):  # the student vector of largest |cosine|, sign-matched
                cos = v_s.t() @ v_t[:, j]
                i = int(cos.abs().argmax())
                aligned.append(v_s[:, i] * torch.sign(cos[i]) * s_t[j])
            vs.append(torch.stack(aligned, 1))
            vt.append(v_t * s_t)
        if prev is not None:
            for n in range(bsz):
                rbf_s = torch.exp(-((vs[n][:, None, :] - prev[0][n][None, :, :]) ** 2) / 8)
                rbf_t = torch.exp(-((vt[n][:, None, :] - prev[1][n][None, :, :]) ** 2) / 8)
                total = total + ((rbf_s - rbf_t) ** 2).sum()
        prev = (vs, vt)
    return total / bsz


def test_kdsvd_matches_hand_computation():
    shapes = [(2, 4, 4, 4), (2, 5, 2, 2), (2, 5, 2, 2)]
    check(
        lambda s, t: losses.kdsvd(s, t), ref_kdsvd, shapes, shapes, tol={"rtol": 1e-4, "atol": 1e-5}
    )


def test_kdsvd_refuses_unequal_channels():
    with pytest.raises(ValueError, match="equal channel counts"):
        losses.kdsvd([torch.randn(2, 4, 4, 4)], [torch.randn(2, 5, 4, 4)])


# ---- AB ----------------------------------------------------------------------------------------
def ref_ab(s_list, t_list, margin=1.0):
    n = len(s_list)
    total = 0
    for i, (s, t) in enumerate(zip(s_list, t_list, strict=True)):
        stage = 0
        for a, b in zip(s.flatten(), t.flatten(), strict=True):
            if b <= 0 and a > -margin:
                stage = stage + (a + margin) ** 2
            elif b > 0 and a <= margin:
                stage = stage + (a - margin) ** 2
        total = total + 2.0 ** (i - n + 1) * stage / s.shape[0] * 3 / 1000
    return total


def test_ab_matches_hand_computation():
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2)]
    check(lambda s, t: losses.ab_stages(s, t), ref_ab, shapes, shapes)


# ---- FT ----------------------------------------------------------------------------------------
def test_factor_transfer_matches_hand_computation():
    def ref(s, t):
        s, t = smaller(s[0], t[0])
        fs, ft = (x.pow(2).mean(1).flatten(1) for x in (s, t))
        fs = fs / fs.norm(dim=1, keepdim=True)
        ft = ft / ft.norm(dim=1, keepdim=True)
        return (fs - ft).abs().mean()

    check(lambda s, t: losses.factor_transfer(s[0], t[0]), ref, [(2, 3, 4, 4)], [(2, 4, 2, 2)])


# ---- FSP ---------------------------------------------------------------------------------------
def ref_fsp(s_list, t_list):
    def gram(bottom, top):
        bottom, top = smaller(bottom, top)
        b, cb, h, w = bottom.shape
        ct = top.shape[1]
        g = torch.zeros(b, ct, cb, dtype=bottom.dtype)
        rows = []
        for n in range(b):
            rows.append(
                torch.stack(
                    [
                        torch.stack([(top[n, i] * bottom[n, j]).sum() / (h * w) for j in range(cb)])
                        for i in range(ct)
                    ]
                )
            )
        return g + torch.stack(rows)

    total = 0
    for i in range(len(s_list) - 1):
        d = gram(s_list[i], s_list[i + 1]) - gram(t_list[i], t_list[i + 1])
        total = total + (d * d).mean()
    return total


def test_fsp_matches_hand_computation():
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2), (2, 3, 2, 2)]
    check(lambda s, t: losses.fsp(s, t), ref_fsp, shapes, shapes)


# ---- OFD ---------------------------------------------------------------------------------------
def test_ofd_margin_is_the_truncated_gaussian_mean():
    weight = torch.tensor([1.0, -2.0, 0.5])
    bias = torch.tensor([0.0, 1.0, 3.0])  # the last: tail mass below 0.1 %
    got = losses.ofd_margin(weight, bias)
    expected = []
    for s, m in zip(weight.abs().tolist(), bias.tolist(), strict=True):
        cdf = 0.5 * math.erfc(m / s / math.sqrt(2))
        if cdf > 0.001:
            pdf = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
            expected.append(m - s * pdf / cdf)
        else:
            expected.append(-3 * s)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_ofd_matches_hand_computation():
    margin = torch.tensor([-0.5, -1.5])

    def ref(s, t):
        s, t = s[0], pool_to(t[0], s[0].shape[-2:])
        total = 0
        for n in range(s.shape[0]):
            for c in range(s.shape[1]):
                m = float(margin[c])
                for a, b in zip(s[n, c].flatten(), t[n, c].flatten(), strict=True):
                    if b > 0 or (a > b and m < b <= 0):
                        total = total + (a - b) ** 2
                    elif a > m and b <= m:
                        total = total + (a - m) ** 2
        return total / s.shape[0]

    check(
        lambda s, t: losses.ofd(s[0], t[0], margin), ref, [(2, 2, 2, 2)], [(2, 2, 4, 4)], scale=1.5
    )


# ---- HCL (ReviewKD) ----------------------------------------------------------------------------
def test_hcl_matches_hand_computation():
    def ref(s_list, t_list):
        total = 0
        for s, t in zip(s_list, t_list, strict=True):
            h = s.shape[2]
            terms = [(((s - t) ** 2).mean(), 1.0)]
            w = 1.0
            for size in (4, 2, 1):
                if size < h:
                    w /= 2
                    d = pool_to(s, (size, size)) - pool_to(t, (size, size))
                    terms.append(((d * d).mean(), w))
            total = total + sum(v * w for v, w in terms) / sum(w for _, w in terms)
        return total

    shapes = [(2, 3, 8, 8), (2, 4, 2, 2), (2, 5, 1, 1)]
    check(lambda s, t: losses.hcl(s, t), ref, shapes, shapes)


# ---- the reference code's own figures --------------------------------------------------------
def reference(name: str) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
    record = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
    n_s = sum(k.startswith("student.") for k in record)
    n_t = sum(k.startswith("teacher.") for k in record)
    s = [record[f"student.{i}"].clone().requires_grad_(True) for i in range(n_s)]
    t = [record[f"teacher.{i}"] for i in range(n_t)]
    return record, s, t


def assert_like_reference(record: dict, s: list[torch.Tensor], loss: torch.Tensor) -> None:
    loss.backward()
    torch.testing.assert_close(loss.detach().double(), record["loss"], rtol=1e-5, atol=1e-6)
    for i, x in enumerate(s):
        torch.testing.assert_close(x.grad, record[f"grad.{i}"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("nst", lambda s, t: sum(losses.nst(a, b) for a, b in zip(s, t, strict=True))),
        ("kdsvd", losses.kdsvd),
        ("ab", losses.ab_stages),
        ("ft", lambda s, t: losses.factor_transfer(s[0], t[0])),
        ("fsp", losses.fsp),
    ],
)
def test_loss_matches_the_reference_code(name, fn):
    record, s, t = reference(name)
    assert_like_reference(record, s, fn(s, t))


def test_vid_matches_the_reference_code():
    record, s, t = reference("vid")
    regs = []
    for i, (f_s, f_t) in enumerate(zip(s, t, strict=True)):
        reg = VIDRegressor(f_s.shape[1], f_t.shape[1], 5.0, 1e-5)
        state = {
            k.removeprefix(f"state.vid.{i}.").replace("regressor.", "mean."): v
            for k, v in record.items()
            if k.startswith(f"state.vid.{i}.")
        }
        reg.load_state_dict(state)
        regs.append(reg)
    loss = sum(vid_stage(r, a, b, 1e-5) for r, a, b in zip(regs, s, t, strict=True))
    assert_like_reference(record, s, loss)
    # the initial variance is the reference's too
    torch.testing.assert_close(
        losses.vid_log_scale_init(5), torch.full((5,), float(record["state.vid.0.log_scale"][0]))
    )


def test_ofd_matches_the_reference_code():
    record, s, t = reference("ofd")
    conns, margins = [], []
    for i, (f_s, f_t) in enumerate(zip(s, t, strict=True)):
        conn = connector(f_s.shape[1], f_t.shape[1], 1)
        prefix = f"state.connectors.connectors.{i}."
        conn.load_state_dict(
            {k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)}
        )
        conns.append(conn.train())
        margin = losses.ofd_margin(record[f"bn.{i}.weight"], record[f"bn.{i}.bias"])
        torch.testing.assert_close(margin, record[f"margin.{i}"], rtol=1e-5, atol=1e-6)
        margins.append(margin)
    assert_like_reference(record, s, ofd_stages(conns, s, t, margins))


def test_reviewkd_matches_the_reference_code():
    record, s, t = reference("reviewkd")
    reviewer = Reviewer([4, 6, 8, 8], [5, 7, 9, 9], [(8, 8), (4, 4), (2, 2), (1, 1)]).train()
    last = len(reviewer.abfs) - 1
    state = {}
    for key, value in record.items():
        if key.startswith("state.abfs."):
            index, rest = key.removeprefix("state.abfs.").split(".", 1)
            state[f"abfs.{last - int(index)}.{rest}"] = (
                value  # the reference lists them deepest first
            )
    reviewer.load_state_dict(state)
    targets = [x if x.dim() == 4 else x[:, :, None, None] for x in t]
    assert_like_reference(record, s, losses.hcl(reviewer(s), targets))


def test_kdsvd_gradient_stays_finite_at_repeated_singular_values():
    # each sample's (HW, C) matrix has orthogonal columns of equal norm: all singular values tie
    eye = torch.eye(4).repeat(4, 1)  # (16, 4)
    student = eye.t().reshape(1, 4, 4, 4).repeat(2, 1, 1, 1).requires_grad_(True)
    teacher = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    prev_s = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    loss = losses.kdsvd([prev_s.requires_grad_(True), student], [teacher[:, :3], teacher])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
