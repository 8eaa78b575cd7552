"""The training and validation steps: many steps per `tf.function` call, one host sync per call.

Why many steps per call: a host round trip per step (reading the step's result, the optimizer's
counter, writing summaries) cost 1.5-4 ms on this machine — as much as a whole step of the frozen
network on a GPU. A call runs up to `n` steps in a `tf.range` loop on the device, adds up the loss,
the correct answers and the example count there, and returns them once.

One step for every strategy: `strategy.run` of a per-replica function, the loss averaged over the
GLOBAL batch by `tf.nn.compute_average_loss` (the optimizer sums the replicas' gradients), because
Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).

End of data: `get_next_as_optional` agrees across all workers on whether any batch is left; a worker
that has run out gets an empty batch, runs one black placeholder image of weight 0 (the CPU
convolution rejects a batch of 0) and still joins the gradient all-reduce, so nobody waits forever
and nothing is counted twice. A call that runs fewer steps than asked has reached the end of the epoch.

XLA (`jit`): the forward and backward pass (and the device-side augmentation) are compiled; the
optimizer's update stays outside, because under a strategy it merges the replicas' gradients with a
cross-replica call that XLA cannot compile.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from model.contract import predicted_male
from pipeline.augment import NUM_DRAWS, AugmentParams, augment_batch

# A training call returns [loss sum, correct, count, steps run, index of the first step whose loss
# was not finite (-1: none)]; a validation call [loss sum, correct, count, predicted male, steps run].
TRAIN_WIDTH, EVAL_WIDTH = 5, 5


class StepFunctions(NamedTuple):
    train: Callable[[object, int], tf.Tensor]      # (distributed iterator, max steps) -> TRAIN_WIDTH sums
    evaluate: Callable[[object, int], tf.Tensor]   # (distributed iterator, max steps) -> EVAL_WIDTH sums


def _placeholder_if_empty(batch: tuple, image_size: int) -> tuple:
    """(images, labels, weights[, draws]) with one black placeholder image of weight 0 when the
    batch is empty (see the module docstring). Not model.contract.male_probability's skip: a
    training replica must still run the model to join the gradient all-reduce."""
    images, labels = batch[0], batch[1]
    empty = tf.equal(tf.shape(images)[0], 0)

    def unless_empty(placeholder, value):
        return tf.cond(empty, lambda: placeholder, lambda: value)

    images = unless_empty(tf.zeros([1, image_size, image_size, 3], images.dtype), images)
    weights = unless_empty(tf.zeros([1], tf.float32), tf.ones_like(labels, tf.float32))
    labels = unless_empty(tf.zeros([1], labels.dtype), labels)
    draws = unless_empty(tf.zeros([1, NUM_DRAWS], batch[2].dtype), batch[2]) if len(batch) > 2 else None
    return images, labels, weights, draws


def _sums(probs, labels, per_example, weights) -> list[tf.Tensor]:
    predicted = predicted_male(probs[:, 0])
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * weights)
    return [tf.reduce_sum(per_example), correct, tf.reduce_sum(weights)]


# Over 60 lines on purpose: the step functions are closures over one model, optimizer and strategy,
# and tracing them together keeps their shared state in one scope.
def make_steps(strategy: tf.distribute.Strategy, model: keras.Model, optimizer, *, global_batch: int,
               loss_scaling: bool, image_size: int, jit: bool,
               device_augment: AugmentParams | None = None) -> StepFunctions:
    """The step functions of one run. device_augment: augment the batches inside the step, with
    the draws the reader yields as the batch's third element (None: the reader augmented them)."""
    trainable = model.trainable_variables
    SUM = tf.distribute.ReduceOp.SUM

    def gradients_and_sums(images, labels, weights, draws):
        if device_augment is not None:
            images = augment_batch(images, draws, device_augment)
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = keras.losses.binary_crossentropy(labels[:, None], probs) * weights
            # Sum over this replica / GLOBAL batch: the optimizer sums the replicas' gradients.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        return tape.gradient(scaled, trainable), _sums(probs, labels, per_example, weights)

    def forward_sums(images, labels, weights):
        probs = model(images, training=False)
        per_example = keras.losses.binary_crossentropy(labels[:, None], probs) * weights
        # Also how many were predicted male: all or none of them means a collapsed model.
        male = tf.reduce_sum(predicted_male(probs[:, 0]) * weights)
        return [*_sums(probs, labels, per_example, weights), male]

    if jit:
        gradients_and_sums = tf.function(gradients_and_sums, jit_compile=True)
        forward_sums = tf.function(forward_sums, jit_compile=True)

    def replica_train(batch):
        images, labels, weights, draws = _placeholder_if_empty(batch, image_size)
        gradients, sums = gradients_and_sums(images, labels, weights, draws)
        optimizer.apply(gradients, trainable)  # unscales when loss scaling
        return sums

    def replica_eval(batch):
        images, labels, weights, _ = _placeholder_if_empty(batch, image_size)
        return forward_sums(images, labels, weights)

    def reduced(per_replica) -> tf.Tensor:
        return tf.cast(tf.stack([strategy.reduce(SUM, value, axis=None) for value in per_replica]), tf.float64)

    @tf.function
    def train(iterator, n):
        totals = tf.zeros([TRAIN_WIDTH - 2], tf.float64)
        steps, first_bad = tf.constant(0, tf.int64), tf.constant(-1, tf.int64)
        for i in tf.range(tf.cast(n, tf.int64)):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            sums = reduced(strategy.run(replica_train, args=(optional.get_value(),)))
            totals += sums
            steps += 1
            if not tf.math.is_finite(sums[0]):
                first_bad = i          # stop at once: the host says which step and saves nothing
                break
        return tf.concat([totals, tf.cast(tf.stack([steps, first_bad]), tf.float64)], axis=0)

    @tf.function
    def evaluate(iterator, n):
        totals = tf.zeros([EVAL_WIDTH - 1], tf.float64)
        steps = tf.constant(0, tf.int64)
        for _ in tf.range(tf.cast(n, tf.int64)):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            totals += reduced(strategy.run(replica_eval, args=(optional.get_value(),)))
            steps += 1
        return tf.concat([totals, tf.cast(tf.reshape(steps, [1]), tf.float64)], axis=0)

    return StepFunctions(train=train, evaluate=evaluate)
