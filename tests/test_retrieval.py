"""Retrieval mAP: hand-computed rankings, its limits, chunking, the random-ranking baseline, and
embeddings tapped from a model over unaugmented in-order loaders."""

from __future__ import annotations

import pytest
import torch

from mhkd.retrieval import embeddings, mean_average_precision, retrieval_loaders, retrieval_map

from conftest import TinyNet

#: Database: d0 = (1, 0) class 0, d1 = (0, 1) class 1, d2 = (1, 1) class 0, d3 = (−1, .2) class 0.
DB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]])
DB_LABELS = torch.tensor([0, 1, 0, 0])
#: Queries: q0 = (.2, 1) class 0, q1 = (−1, 0) class 1.
QUERIES = torch.tensor([[0.2, 1.0], [-1.0, 0.0]])
QUERY_LABELS = torch.tensor([0, 1])


def test_hand_computed_rankings():
    """q0 (class 0, 3 relevant): cosines d1 .98, d2 .83, d0 .20, d3 0, so relevance 0 1 1 1
    and precision at ranks 1–4 is 0, 1/2, 2/3, 3/4. AP = (1/2 + 2/3 + 3/4)/3 = 23/36; the
    interpolated precision (best at this rank or later) is 3/4 at every rank, so the 11-point
    AP is 3/4.
    q1 (class 1, 1 relevant): cosines d3 .98, d1 0, d2 −.71, d0 −1, so relevance 0 1 0 0 and
    precision 0, 1/2, 1/3, 1/4. AP = 1/2; interpolated: 1/2 at recall 0 (the best anywhere)
    and at recall .1–1 (reached at rank 2): 1/2.
    mAP = (23/36 + 1/2)/2 = 41/72; 11-point mAP = (3/4 + 1/2)/2 = 5/8."""
    args = (QUERIES, QUERY_LABELS, DB, DB_LABELS)
    assert mean_average_precision(*args, interpolated=False) == pytest.approx(41 / 72)
    assert mean_average_precision(*args) == pytest.approx(5 / 8)
    # cosine, not dot product: scaling any vector changes nothing
    scaled = (QUERIES * torch.tensor([[3.0], [0.1]]), QUERY_LABELS, DB * 7.0, DB_LABELS)
    assert mean_average_precision(*scaled) == pytest.approx(5 / 8)


def test_interpolation_reads_the_first_rank_reaching_each_level():
    """One query, 3 relevant among 6: relevance 1 0 0 1 1 0, precision 1, 1/2, 1/3, 1/2, 3/5,
    1/2; best from each rank on: 1, 3/5, 3/5, 3/5, 3/5, 1/2. Recall 0–.3 needs 1 hit (rank 1:
    1), .4–.6 needs 2 (rank 4: 3/5), .7–1 needs 3 (rank 5: 3/5): (4·1 + 7·3/5)/11 = 41/55."""
    db = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    db_labels = torch.tensor([0, 1, 1, 0, 0, 1])
    query, label = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert mean_average_precision(query, label, db, db_labels) == pytest.approx(41 / 55)
    exact = (1 + 2 / 4 + 3 / 5) / 3
    assert mean_average_precision(query, label, db, db_labels, interpolated=False) == (
        pytest.approx(exact)
    )


@pytest.mark.parametrize("interpolated", [True, False])
def test_perfect_separation_is_one(interpolated):
    torch.manual_seed(0)
    labels = torch.arange(60) % 5
    emb = torch.eye(5)[labels] * 3 + 0.05 * torch.randn(60, 5)
    got = mean_average_precision(emb[:20], labels[:20], emb, labels, interpolated=interpolated)
    assert got == pytest.approx(1.0)


@pytest.mark.parametrize("interpolated", [True, False])
def test_chunking_changes_nothing(interpolated):
    torch.manual_seed(1)
    q, db = torch.randn(37, 8), torch.randn(150, 8)
    q_labels, db_labels = torch.randint(0, 4, (37,)), torch.randint(0, 4, (150,))
    db_labels[:4] = torch.arange(4)
    whole = mean_average_precision(
        q, q_labels, db, db_labels, chunk=1000, interpolated=interpolated
    )
    for chunk in (1, 5, 36):
        got = mean_average_precision(
            q, q_labels, db, db_labels, chunk=chunk, interpolated=interpolated
        )
        assert got == pytest.approx(whole, rel=1e-12)


def test_random_embeddings_give_the_random_ranking_expectation():
    """A random ranking of N items, R relevant: E[AP] = (H_N + (N − H_N)(R − 1)/(N − 1)) / N,
    0.1032 for N = 2000, R = 200 — the class fraction 0.1 plus a small-sample term. The
    11-point measure credits the best early precision, so it sits above."""
    torch.manual_seed(2)
    n, r = 2000, 200
    db_labels = torch.arange(n) % 10
    q_labels = torch.arange(400) % 10
    q, db = torch.randn(400, 32), torch.randn(n, 32)
    harmonic = sum(1 / k for k in range(1, n + 1))
    expected = (harmonic + (n - harmonic) * (r - 1) / (n - 1)) / n
    got = mean_average_precision(q, q_labels, db, db_labels, interpolated=False)
    assert got == pytest.approx(expected, abs=0.004)
    assert expected < mean_average_precision(q, q_labels, db, db_labels) < 0.25


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no item"):
        mean_average_precision(QUERIES, torch.tensor([0, 2]), DB, DB_LABELS)
    with pytest.raises(ValueError, match="N×D with one D"):
        mean_average_precision(QUERIES, QUERY_LABELS, DB[:, :1], DB_LABELS)
    with pytest.raises(ValueError, match="one label per embedding"):
        mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS[:3])
    with pytest.raises(ValueError, match="some queries"):
        mean_average_precision(QUERIES[:0], QUERY_LABELS[:0], DB, DB_LABELS)


def test_embeddings_and_retrieval_map_over_in_order_loaders(tiny_data):
    """The database loader sees every training image once, in order and unaugmented; the
    embedding is the model's ``embedding_name`` output (feature maps are pooled), taken in
    eval mode, and the mAP is the same measure on those embeddings, in %."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).train()
    db_loader, query_loader = retrieval_loaders(tiny_data, batch_size=48)
    emb, labels = embeddings(model, db_loader)
    assert model.training  # restored
    assert torch.equal(labels, tiny_data.train.labels)
    model.eval()
    with torch.no_grad():
        images = torch.cat([b.images for b in db_loader])
        direct = model.flatten(model.pool(model.stage3(model.stage2(model.stage1(images)))))
        pooled, _ = embeddings(model, db_loader, layer="stage2")
        maps = model.stage2(model.stage1(images)).mean(dim=(2, 3))
    assert torch.allclose(emb, direct, atol=1e-6) and emb.shape == (256, 32)
    assert torch.allclose(pooled, maps, atol=1e-6)
    q_emb, q_labels = embeddings(model, query_loader)
    expected = 100 * mean_average_precision(q_emb, q_labels, emb, labels)
    got = retrieval_map(model, db_loader, query_loader)
    assert got == pytest.approx(expected) and 0 < got < 100
    with pytest.raises(ValueError, match="declares no embedding_name"):
        embeddings(torch.nn.Sequential(torch.nn.Flatten()), db_loader)
