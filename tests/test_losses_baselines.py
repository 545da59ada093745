"""The baselines' loss functions against hand computations on tiny tensors.

Each reference below is written independently of the library: explicit loops over samples,
positions and classes in float64 with Python's ``math`` on scalars where it can be, so that
autograd through the loops gives the reference gradient. The library computes in float32;
values and gradients must agree to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mhkd import losses
from mhkd.losses.crd import ContrastMemory, CRDEmbed, nce_loss

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _leaf(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)


def check(loss_fn, reference_fn, *shapes, scale=1.0, **kwargs):
    """Compare value and gradient (w.r.t. the student input) of loss_fn with reference_fn."""
    s = _leaf(*shapes[0], seed=1, scale=scale)
    t = _leaf(*shapes[1], seed=2, scale=scale)
    value = loss_fn(s, t, **kwargs)
    value.backward()
    assert value.dtype == torch.float32 and value.dim() == 0
    assert t.grad is None, "the teacher's input must get no gradient"

    s64 = s.detach().double().requires_grad_(True)
    ref = reference_fn(s64, t.detach().double(), **kwargs)
    ref.backward()
    torch.testing.assert_close(value.detach().double(), ref.detach(), **TOL)
    torch.testing.assert_close(s.grad.double(), s64.grad, **TOL)
    return value


def _sq(x):
    return x * x


def _smooth_l1(x):
    return 0.5 * x * x if abs(float(x.detach() if torch.is_tensor(x) else x)) < 1 else abs(x) - 0.5


# ---- KD -------------------------------------------------------------------------------------
def ref_kd(s, t, temperature=4.0):
    b, k = s.shape
    total = 0
    for i in range(b):
        zs = [s[i, c] / temperature for c in range(k)]
        zt = [t[i, c] / temperature for c in range(k)]
        ls = torch.log(sum(torch.exp(z) for z in zs))
        lt = torch.log(sum(torch.exp(z) for z in zt))
        for c in range(k):
            pt = torch.exp(zt[c] - lt)
            total = total + pt * ((zt[c] - lt) - (zs[c] - ls))
    return total / b * temperature**2


def test_kd_matches_hand_computation():
    check(losses.kd, ref_kd, (3, 5), (3, 5), scale=3.0)


# ---- FitNet ---------------------------------------------------------------------------------
def ref_fitnet(s, t):
    total, n = 0, 0
    for idx in torch.cartesian_prod(*(torch.arange(d) for d in s.shape)):
        total = total + _sq(s[tuple(idx)] - t[tuple(idx)])
        n += 1
    return total / n


def test_fitnet_matches_hand_computation():
    check(losses.fitnet, ref_fitnet, (2, 3, 2, 2), (2, 3, 2, 2))


def test_fitnet_needs_equal_shapes():
    with pytest.raises(ValueError, match="regress"):
        losses.fitnet(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))


# ---- AT -------------------------------------------------------------------------------------
def _nested(f):
    """A 4-D tensor as nested lists [b][c][y][x] of scalar tensors."""
    return [[[list(row) for row in channel] for channel in sample] for sample in f]


def _avg_pool_blocks(f, out_h, out_w):
    """Average pooling by hand for sizes that divide evenly (what adaptive pooling does then)."""
    kh, kw = len(f[0][0]) // out_h, len(f[0][0][0]) // out_w
    return [
        [
            [
                [
                    sum(ch[y * kh + dy][x * kw + dx] for dy in range(kh) for dx in range(kw))
                    / (kh * kw)
                    for x in range(out_w)
                ]
                for y in range(out_h)
            ]
            for ch in sample
        ]
        for sample in f
    ]


def _attention(f, p):
    maps = []
    for sample in f:
        c, h, w = len(sample), len(sample[0]), len(sample[0][0])
        a = [
            sum(abs(sample[ch][y][x]) ** p for ch in range(c)) / c
            for y in range(h)
            for x in range(w)
        ]
        norm = torch.sqrt(sum(_sq(v) for v in a))
        maps.append([v / norm for v in a])
    return maps


def ref_at(s, t, p=2.0):
    (sh, sw), (th, tw) = s.shape[-2:], t.shape[-2:]
    s, t = _nested(s), _nested(t)
    if sh * sw > th * tw:
        s = _avg_pool_blocks(s, th, tw)
    elif sh * sw < th * tw:
        t = _avg_pool_blocks(t, sh, sw)
    a_s, a_t = _attention(s, p), _attention(t, p)
    diffs = [
        _sq(x - y) for rs, rt in zip(a_s, a_t, strict=True) for x, y in zip(rs, rt, strict=True)
    ]
    return sum(diffs) / len(diffs)


def test_at_matches_hand_computation_same_size():
    check(losses.at, ref_at, (2, 3, 3, 3), (2, 5, 3, 3))


def test_at_pools_the_larger_student_map():
    check(losses.at, ref_at, (2, 2, 4, 4), (2, 3, 2, 2))


def test_at_pools_the_larger_teacher_map():
    check(losses.at, ref_at, (2, 2, 2, 2), (2, 3, 4, 4))


def test_at_with_another_power():
    check(losses.at, ref_at, (2, 2, 2, 2), (2, 3, 2, 2), p=3.0)


# ---- SP -------------------------------------------------------------------------------------
def _row_normalised_gram(f):
    b = f.shape[0]
    flat = f.reshape(b, -1)
    gram = [
        [sum(flat[i, k] * flat[j, k] for k in range(flat.shape[1])) for j in range(b)]
        for i in range(b)
    ]
    out = []
    for row in gram:
        norm = torch.sqrt(sum(_sq(v) for v in row))
        out.append([v / norm for v in row])
    return out


def ref_sp(s, t):
    b = s.shape[0]
    gs, gt = _row_normalised_gram(s), _row_normalised_gram(t)
    return sum(_sq(gt[i][j] - gs[i][j]) for i in range(b) for j in range(b)) / (b * b)


def test_sp_matches_hand_computation():
    check(losses.sp, ref_sp, (3, 2, 2, 2), (3, 4, 3, 3))


# ---- CC -------------------------------------------------------------------------------------
def ref_cc(s, t, gamma=0.4, order=2):
    b = s.shape[0]

    def corr(f):
        unit = [f[i] / torch.sqrt(sum(_sq(v) for v in f[i])) for i in range(b)]
        out = []
        for i in range(b):
            row = []
            for j in range(b):
                dot = sum(unit[i][k] * unit[j][k] for k in range(f.shape[1]))
                row.append(
                    sum(
                        math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot**p
                        for p in range(order + 1)
                    )
                )
            out.append(row)
        return out

    cs, ct = corr(s), corr(t)
    return sum(_sq(ct[i][j] - cs[i][j]) for i in range(b) for j in range(b)) / (b * b)


def test_cc_matches_hand_computation():
    check(losses.cc, ref_cc, (4, 3), (4, 5))


def test_cc_higher_order_approaches_the_exact_rbf_kernel():
    x = torch.randn(5, 4)
    unit = F.normalize(x, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(unit, unit).pow(2))
    approx = losses.correlation_matrix(x, gamma=0.4, order=12)
    torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-6)
    check(losses.cc, ref_cc, (4, 3), (4, 3), gamma=0.7, order=3)


def ref_cc_delta(s, t):
    b, d = s.shape
    total = 0
    for i in range(b - 1):
        total = total + sum(
            abs(s[i, k] - t[i, k]) * abs(s[i + 1, k] - t[i + 1, k]) for k in range(d)
        )
    return total / (b - 1)


def test_cc_delta_matches_hand_computation_and_trains_both_embeddings():
    s, t = _leaf(5, 3, seed=1), _leaf(5, 3, seed=2)
    value = losses.cc_delta(s, t)
    value.backward()
    s64 = s.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    ref = ref_cc_delta(s64, t64)
    ref.backward()
    assert value.dtype == torch.float32 and value.dim() == 0
    torch.testing.assert_close(value.detach().double(), ref.detach(), **TOL)
    torch.testing.assert_close(s.grad.double(), s64.grad, **TOL)
    torch.testing.assert_close(t.grad.double(), t64.grad, **TOL)  # the teacher embedding learns
    with pytest.raises(ValueError, match="one shape"):
        losses.cc_delta(torch.randn(4, 3), torch.randn(4, 5))


# ---- RKD ------------------------------------------------------------------------------------
def ref_rkd(s, t, distance_weight=25.0, angle_weight=50.0):
    b = s.shape[0]

    def distances(f):
        d = [
            [
                torch.sqrt(sum(_sq(f[i, k] - f[j, k]) for k in range(f.shape[1])))
                if i != j
                else 0.0
                for j in range(b)
            ]
            for i in range(b)
        ]
        nonzero = [v for row in d for v in row if not isinstance(v, float)]
        mean = sum(nonzero) / len(nonzero)
        return [[v / mean for v in row] for row in d]

    def angles(f):
        out = []
        for i in range(b):  # vertex
            for j in range(b):
                for k in range(b):
                    if j == i or k == i:
                        out.append(0.0)  # a zero vector normalises to zero: cosine 0
                        continue
                    u = f[j] - f[i]
                    v = f[k] - f[i]
                    out.append(sum(u * v) / (torch.sqrt(sum(u * u)) * torch.sqrt(sum(v * v))))
        return out

    ds, dt = distances(s), distances(t.detach())
    dist_term = sum(_smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2
    a_s, a_t = angles(s), angles(t.detach())
    angle_term = sum(_smooth_l1(x - y) for x, y in zip(a_s, a_t, strict=True)) / b**3
    return distance_weight * dist_term + angle_weight * angle_term


def test_rkd_matches_hand_computation():
    check(losses.rkd, ref_rkd, (4, 3), (4, 6))


def test_rkd_terms_weigh_separately():
    check(losses.rkd, ref_rkd, (4, 3), (4, 2), scale=5.0, distance_weight=1.0, angle_weight=0.0)
    check(losses.rkd, ref_rkd, (4, 3), (4, 2), scale=0.3, distance_weight=0.0, angle_weight=2.0)


# ---- PKT ------------------------------------------------------------------------------------
def ref_pkt(s, t, eps=1e-7):
    b = s.shape[0]

    def conditional(f):
        unit = [f[i] / (torch.sqrt(sum(_sq(v) for v in f[i])) + eps) for i in range(b)]
        kernel = [[(sum(unit[i] * unit[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[kernel[i][j] / sum(kernel[i]) for j in range(b)] for i in range(b)]

    q, p = conditional(s), conditional(t)
    return sum(
        p[i][j] * torch.log((p[i][j] + eps) / (q[i][j] + eps)) for i in range(b) for j in range(b)
    ) / (b * b)


def test_pkt_matches_hand_computation():
    check(losses.pkt, ref_pkt, (4, 3), (4, 5))


# ---- DKD ------------------------------------------------------------------------------------
def ref_dkd(s, t, labels, alpha=1.0, beta=8.0, temperature=4.0):
    b, k = s.shape
    total = 0
    for i in range(b):
        y = int(labels[i])
        es = [torch.exp(s[i, c] / temperature) for c in range(k)]
        et = [torch.exp(t[i, c] / temperature) for c in range(k)]
        ps = [e / sum(es) for e in es]
        pt = [e / sum(et) for e in et]
        # target vs. the rest
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd = sum(bt[c] * torch.log(bt[c] / bs[c]) for c in range(2))
        # among the non-target classes
        others = [c for c in range(k) if c != y]
        qs = [es[c] / sum(es[o] for o in others) for c in others]
        qt = [et[c] / sum(et[o] for o in others) for c in others]
        nckd = sum(qt[c] * torch.log(qt[c] / qs[c]) for c in range(k - 1))
        total = total + alpha * tckd + beta * nckd
    return total / b * temperature**2


@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_hand_computation(alpha, beta, temperature):
    labels = torch.tensor([0, 3, 2])

    def fn(s, t, **kw):
        return losses.dkd(s, t, labels, **kw)

    def ref(s, t, **kw):
        return ref_dkd(s, t, labels, **kw)

    check(fn, ref, (3, 5), (3, 5), scale=3.0, alpha=alpha, beta=beta, temperature=temperature)


def test_dkd_with_alpha_and_beta_one_is_kd():
    """Per sample, KD = TCKD + (1 − p_t^target) · NCKD (Eq. 1 of the DKD paper)."""
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    labels = torch.tensor([1, 0, 5, 2])
    pt_target = F.softmax(t / 2.0, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    # per-sample form of the identity, batch-averaged
    per_sample_weighted = []
    for i in range(4):
        tk, nk = losses.dkd_parts(s[i : i + 1], t[i : i + 1], labels[i : i + 1], 2.0)
        per_sample_weighted.append(tk + (1 - pt_target[i]) * nk)
    kd = losses.kd(s, t, 2.0)
    torch.testing.assert_close(sum(per_sample_weighted) / 4, kd, rtol=1e-5, atol=1e-6)


def test_dkd_survives_extreme_logits():
    s = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-300.0, 300.0, 10.0]])
    loss = losses.dkd(s, t, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---- CRD ------------------------------------------------------------------------------------
def ref_nce(probs, num_samples, eps=1e-7):
    b, width = probs.shape
    m = width - 1
    pn = 1.0 / num_samples
    total = 0
    for i in range(b):
        total = total + torch.log(probs[i, 0] / (probs[i, 0] + m * pn + eps))
        for k in range(1, width):
            total = total + torch.log(m * pn / (probs[i, k] + m * pn + eps))
    return -total / b


def test_nce_loss_matches_hand_computation():
    probs = (torch.rand(3, 5) * 2e-3).requires_grad_(True)
    value = nce_loss(probs, num_samples=40)
    value.backward()
    p64 = probs.detach().double().requires_grad_(True)
    ref = ref_nce(p64, 40)
    ref.backward()
    torch.testing.assert_close(value.double(), ref.detach(), **TOL)
    torch.testing.assert_close(probs.grad.double(), p64.grad, **TOL)


def test_crd_embedding_is_a_unit_linear_map():
    embed = CRDEmbed(6, 4)
    x = torch.randn(3, 6)
    out = embed(x)
    expected = embed.linear(x)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert embed(x).dtype == torch.float32


def _memory(n=20, dim=4, negatives=6, sampling="uniform", **kw):
    torch.manual_seed(0)
    return ContrastMemory(n, dim, negatives, sampling=sampling, **kw)


def test_memory_scores_match_hand_computation():
    memory = _memory(temperature=0.5)
    v_s = F.normalize(torch.randn(3, 4), dim=1)
    v_t = F.normalize(torch.randn(3, 4), dim=1)
    indices = torch.tensor([4, 7, 11])
    bank_s, bank_t = memory.student_bank.clone(), memory.teacher_bank.clone()
    torch.manual_seed(5)
    p_s, p_t = memory(v_s, v_t, indices)
    torch.manual_seed(5)
    rows = memory.sample(indices)
    assert rows.shape == (3, 7) and torch.equal(rows[:, 0], indices)

    def exps(anchor, bank):
        return torch.tensor(
            [[math.exp(float(anchor[b] @ bank[r]) / 0.5) for r in rows[b]] for b in range(3)]
        )

    e_s, e_t = exps(v_s, bank_t), exps(v_t, bank_s)
    z_s, z_t = float(e_s.mean()) * 20, float(e_t.mean()) * 20
    torch.testing.assert_close(memory.z, torch.tensor([z_s, z_t]), rtol=1e-5, atol=0)
    torch.testing.assert_close(p_s, e_s / z_s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p_t, e_t / z_t, rtol=1e-5, atol=1e-7)


def test_memory_update_is_momentum_then_normalise():
    memory = _memory(momentum=0.3)
    before_s, before_t = memory.student_bank.clone(), memory.teacher_bank.clone()
    v_s = F.normalize(torch.randn(2, 4), dim=1)
    v_t = F.normalize(torch.randn(2, 4), dim=1)
    indices = torch.tensor([3, 9])
    memory(v_s, v_t, indices)
    # applied lazily: the banks that served this step's backward are untouched until flush
    assert torch.equal(memory.student_bank, before_s)
    memory.flush()
    for bank, before, v in (
        (memory.student_bank, before_s, v_s),
        (memory.teacher_bank, before_t, v_t),
    ):
        for row, i in enumerate(indices.tolist()):
            mixed = [0.3 * float(before[i, k]) + 0.7 * float(v[row, k]) for k in range(4)]
            norm = math.sqrt(sum(x * x for x in mixed))
            torch.testing.assert_close(bank[i], torch.tensor([x / norm for x in mixed]))
        untouched = [i for i in range(20) if i not in indices.tolist()]
        assert torch.equal(bank[untouched], before[untouched])


def test_memory_does_not_update_in_eval_mode():
    memory = _memory().eval()
    before = memory.student_bank.clone()
    memory(
        F.normalize(torch.randn(2, 4), dim=1),
        F.normalize(torch.randn(2, 4), dim=1),
        torch.tensor([0, 1]),
    )
    memory.flush()
    assert torch.equal(memory.student_bank, before)


def test_dense_and_gathered_scores_agree():
    memory = _memory(n=50, dim=8)
    anchor = torch.randn(3, 8, requires_grad=True)
    rows = torch.randint(50, (3, 40))  # 3·40 ≥ 50: the dense path
    dense = memory.dot(anchor, memory.student_bank, rows)
    (g_dense,) = torch.autograd.grad(dense.pow(2).sum(), anchor)
    memory.num_samples = 10_000  # pretend the bank is large: the gathering path
    gathered = memory.dot(anchor, memory.student_bank, rows)
    (g_gathered,) = torch.autograd.grad(gathered.pow(2).sum(), anchor)
    memory.num_samples = 50
    torch.testing.assert_close(dense, gathered)
    torch.testing.assert_close(g_dense, g_gathered)
    by_hand = torch.stack([memory.student_bank[r] @ anchor[b] for b, r in enumerate(rows)])
    torch.testing.assert_close(dense, by_hand)


def test_negatives_come_from_other_classes_once_labels_are_known():
    memory = _memory(n=30, negatives=200, sampling="other_class")
    labels_all = torch.arange(30) % 3
    memory.labels.copy_(labels_all)
    indices = torch.tensor([0, 1, 2, 4])
    rows = memory.sample(indices, labels_all[indices])
    assert rows.shape == (4, 1 + 29)  # capped at N − 1 negatives
    assert torch.equal(rows[:, 0], indices)
    for b in range(4):
        assert (labels_all[rows[b, 1:]] != labels_all[indices[b]]).all()


def test_uniform_sampling_covers_all_samples():
    memory = _memory(n=10, negatives=9, sampling="uniform")
    rows = torch.cat([memory.sample(torch.tensor([0]))[:, 1:] for _ in range(50)])
    assert set(rows.flatten().tolist()) == set(range(10))


def test_crd_loss_is_two_nce_terms_and_reaches_both_embeddings():
    memory = _memory(n=40, dim=4, negatives=10)
    v_s = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    v_t = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    indices = torch.tensor([1, 2, 3])
    torch.manual_seed(3)
    loss = losses.crd(v_s, v_t, memory, indices)
    loss.backward()
    assert v_s.grad is not None and v_s.grad.abs().sum() > 0
    assert v_t.grad is not None and v_t.grad.abs().sum() > 0
    twin = _memory(n=40, dim=4, negatives=10)
    torch.manual_seed(3)
    p_s, p_t = twin(v_s.detach(), v_t.detach(), indices)
    torch.testing.assert_close(loss, nce_loss(p_s, 40) + nce_loss(p_t, 40))


# ---- common properties ---------------------------------------------------------------------
TEACHER_SIDE = {
    "fitnet": (losses.fitnet, (4, 3, 2, 2), (4, 3, 2, 2)),
    "at": (losses.at, (4, 3, 4, 4), (4, 2, 2, 2)),
    "sp": (losses.sp, (4, 3, 2, 2), (4, 2, 2, 2)),
    "cc": (losses.cc, (4, 3), (4, 5)),
    "rkd": (losses.rkd, (4, 3), (4, 5)),
    "pkt": (losses.pkt, (4, 3), (4, 5)),
    "dkd": (lambda s, t: losses.dkd(s, t, torch.tensor([0, 1, 2, 3])), (4, 5), (4, 5)),
}


@pytest.mark.parametrize("name", sorted(TEACHER_SIDE))
def test_teacher_side_gets_no_gradient_and_inference_tensors_work(name):
    fn, s_shape, t_shape = TEACHER_SIDE[name]
    s = torch.randn(*s_shape, requires_grad=True)
    t = torch.randn(*t_shape, requires_grad=True)
    fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    with torch.inference_mode():  # how a teacher may produce its outputs
        t_inf = torch.randn(*t_shape)
    s.grad = None
    fn(s, t_inf).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(TEACHER_SIDE))
def test_losses_compute_in_float32_under_bf16_inputs(name):
    fn, s_shape, t_shape = TEACHER_SIDE[name]
    s, t = torch.randn(*s_shape), torch.randn(*t_shape)
    full = fn(s, t)
    half = fn(s.bfloat16(), t.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("name", sorted(TEACHER_SIDE))
def test_bf16_autocast_does_not_lower_the_loss_math(name):
    fn, s_shape, t_shape = TEACHER_SIDE[name]
    s, t = torch.randn(*s_shape), torch.randn(*t_shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = fn(s, t)
    torch.testing.assert_close(under_autocast, fn(s, t), rtol=1e-6, atol=1e-7)


def test_memory_scores_stay_float32_under_autocast():
    v_s = F.normalize(torch.randn(3, 4), dim=1)
    v_t = F.normalize(torch.randn(3, 4), dim=1)
    indices = torch.tensor([1, 2, 3])
    plain, autocast = _memory(), _memory()
    torch.manual_seed(1)
    expected = plain(v_s, v_t, indices)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = autocast(v_s, v_t, indices)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_at_is_the_same_on_channels_last_maps():
    s = torch.randn(2, 5, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4)
    losses.at(s, t).backward()
    s_cl = s.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    value = losses.at(s_cl, t.contiguous(memory_format=torch.channels_last))
    value.backward()
    torch.testing.assert_close(value, losses.at(s, t))
    torch.testing.assert_close(s_cl.grad, s.grad)
