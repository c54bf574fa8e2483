"""Knowledge distillation (Hinton et al. 2015) with a frozen teacher:

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s)

Models output probabilities; softmax(log(p)/T) equals the tempered softmax of the logits
(softmax ignores the constant log-sum-exp shift), so no logits are needed. The training model
outputs [student probs | teacher probs] side by side: the teacher sees exactly the batch the
student sees (MixUp/CutMix included) and the loss splits them again.
"""
import keras
from keras import ops

from kclassify.errors import ModelFileError

EPS = 1e-7


def tempered(probs, temperature):
    return ops.softmax(ops.log(ops.clip(probs, EPS, 1.0)) / temperature, axis=-1)


@keras.saving.register_keras_serializable(package="kclassify")
class DistillationLoss(keras.losses.Loss):
    def __init__(self, num_classes, alpha=0.9, temperature=4.0, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.alpha, self.temperature = int(num_classes), float(alpha), float(temperature)

    def call(self, y_true, y_pred):
        student, teacher = y_pred[:, : self.num_classes], y_pred[:, self.num_classes:]
        p_t, p_s = tempered(teacher, self.temperature), tempered(student, self.temperature)
        kl = ops.sum(p_t * (ops.log(ops.clip(p_t, EPS, 1.0)) - ops.log(ops.clip(p_s, EPS, 1.0))), axis=-1)
        ce = -ops.sum(y_true * ops.log(ops.clip(student, EPS, 1.0)), axis=-1)
        return self.alpha * self.temperature ** 2 * kl + (1.0 - self.alpha) * ce

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "alpha": self.alpha,
                "temperature": self.temperature}


def student_metrics(num_classes):
    """top-1 / top-5 of the student half of the side-by-side output."""
    def top1(y_true, y_pred):
        return keras.metrics.categorical_accuracy(y_true, y_pred[:, :num_classes])

    def top5(y_true, y_pred):
        return keras.metrics.top_k_categorical_accuracy(y_true, y_pred[:, :num_classes], k=5)

    return [top1, top5] if num_classes > 5 else [top1]


def distillation_model(student, teacher, teacher_path):
    """Student and frozen `teacher` (loaded from `teacher_path`) side by side on the same input."""
    if tuple(teacher.input_shape[1:]) != tuple(student.input_shape[1:]) or teacher.output_shape != student.output_shape:
        raise ModelFileError(f"teacher {teacher_path} takes {teacher.input_shape[1:]} -> {teacher.output_shape[1:]}, "
                             f"the student {student.input_shape[1:]} -> {student.output_shape[1:]}")
    teacher.trainable = False
    teacher.name = "teacher"
    inputs = keras.Input(student.input_shape[1:], name="pixels")
    taught = teacher(inputs, training=False)
    taught = taught[0] if isinstance(taught, (list, tuple)) else taught  # models saved with a one-item output list
    both = keras.layers.Concatenate(name="student_teacher")([student(inputs), taught])
    return keras.Model(inputs, both, name="distillation")
