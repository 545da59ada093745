"""``mhkd.api.loss_terms``: a configuration's first training step, term by term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from mhkd import api, checkpoint, models

from conftest import TinyNet
from runs import training_run


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    model = models.create("resnet20", num_classes=4)
    checkpoint.save({"arch": checkpoint.model_spec(model), "model": model.state_dict()}, path)
    return str(path)


def test_terms_equal_the_first_training_step_of_a_run(tiny_data, fast, teacher_file):
    """Same zoo student, same seeded regressor and weights: the run's first step and
    loss_terms compute the same terms."""
    run = training_run(
        "resnet8", tiny_data, teacher=teacher_file, method="kd+fitnet", augment=False,
        seed=5, weights={"fitnet": 50.0}, **fast,
    )  # fmt: skip
    run.step.start_epoch(0)
    run.loop.train_loader.set_epoch(0)
    batch = next(iter(run.loop.train_loader))
    _, expected = run.step.forward(batch)
    run.close()

    terms = api.loss_terms(
        run.config, teacher=teacher_file, images=batch.images, labels=batch.labels,
        indices=batch.indices,
    )  # fmt: skip
    assert set(terms) == {"ce", "kd", "fitnet", "total"}
    weights = {"ce": 0.1, "kd": 0.9, "fitnet": 50.0}
    for name, weight in weights.items():
        torch.testing.assert_close(terms[name], weight * expected[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["total"], sum(terms[n] for n in weights))
    terms["total"].backward()  # the graph is attached


def test_a_recipe_file_and_hand_computed_kd(tmp_path, teacher_file):
    """From a recipe: CE and Hinton KD at the recipe's temperature, by hand."""
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": {"name": "synthetic"},
                "models": {"student": "resnet8", "teacher": teacher_file},
                "method": "kd",
                "options": {"kd": {"temperature": 2.0}},
                "weights": {"ce": 1.0, "kd": 1.0},
            }
        )
    )
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    student = TinyNet(num_classes=4)
    terms = api.loss_terms(recipe, student=student, images=images, labels=labels)
    teacher = checkpoint.load_model(teacher_file)[0].eval()
    with torch.no_grad():
        soft = F.softmax(teacher(images) / 2.0, 1)
    logits = student(images)
    kd = (soft * (soft.log() - F.log_softmax(logits / 2.0, 1))).sum(1).mean() * 4.0
    torch.testing.assert_close(terms["kd"], kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, labels))
    assert student.training and not student._forward_hooks  # taps removed from a user module


def test_a_zoo_teacher_without_class_count_is_named():
    config, _ = api.configure("resnet8", "synthetic", "resnet20", "kd")
    with pytest.raises(ValueError, match="resnet20.*num_classes"):
        api.loss_terms(config, images=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1]))
