"""Adding a loss is one entry in ``core/losses.py``'s registry: the config validates it, the
command line offers it, the step trains with it and the read-out uses its own transform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import experiment, get_preset
from mach_jax.core import losses
from mach_jax.readout import decode
from mach_jax.train import parse_arguments


def brier_bucket_loss(logits, buckets, label_mask, label_smoothing=0.0):
    """Squared error of the bucket probabilities against the multi-hot bucket vector: [N]."""
    points = jnp.arange(logits.shape[0])[:, None]
    targets = jnp.zeros_like(logits).at[points, buckets].max(label_mask)
    return ((jax.nn.sigmoid(logits) - targets) ** 2).mean(-1)


@pytest.fixture
def brier(monkeypatch):
    loss = losses.Loss(brier_bucket_loss, probs=lambda x: jax.nn.sigmoid(x) ** 2,
                       log_probs=lambda x: 2 * jax.nn.log_sigmoid(x))
    monkeypatch.setitem(losses.LOSSES, "brier", loss)
    return loss


def test_a_new_loss_is_one_registry_entry(brier, tmp_path):
    assert getattr(parse_arguments(["--loss", "brier"]), "train.loss") == "brier"
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)), jnp.float32)
    np.testing.assert_allclose(decode.bucket_scores_to_probs(logits, "brier", "prob"),
                               jax.nn.sigmoid(logits) ** 2, rtol=1e-6)  # its own transform
    config = get_preset("tiny").replace(train={"loss": "brier", "epochs": 1, "learning_rate": 1e-2})
    metrics = experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert metrics["P@1"] > 0.05  # tiny's L = 300: a random ranking scores about 0.003


def test_an_unknown_loss_is_refused_with_the_known_names():
    with pytest.raises(Exception, match=r"train.loss='hinge'.*softmax.*sigmoid"):
        losses.require_known(get_preset("tiny").replace(train={"loss": "hinge"}).validate().train.loss)
