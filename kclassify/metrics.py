"""Classification metrics in plain numpy, shared by Keras and TFLite evaluation."""
import numpy as np


def classification_report(probs, labels, class_names):
    """top-1/top-5, per-class precision/recall/F1/support, macro averages and the confusion
    matrix (rows = true class, columns = predicted)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels).astype(int)
    k = len(class_names)
    pred = probs.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    top5 = np.argsort(-probs, axis=1)[:, : min(5, k)]
    per_class = [dict(name=str(n), precision=float(p), recall=float(r), f1=float(f), support=int(s))
                 for n, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    present = support > 0
    return dict(
        top1=float((pred == labels).mean()),
        top5=float((top5 == labels[:, None]).any(1).mean()),
        count=int(len(labels)),
        macro=dict(precision=float(precision[present].mean()), recall=float(recall[present].mean()),
                   f1=float(f1[present].mean())),
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=[str(n) for n in class_names],
    )


def format_report(report, title="evaluation"):
    """The per-class table a person reads, then the headline figures."""
    width = max([len(c["name"]) for c in report["per_class"]] + [9])
    lines = [f"{title}: {report['count']} images",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for c in report["per_class"]:
        lines.append(f"{c['name']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    m = report["macro"]
    lines.append(f"{'macro avg':<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {report['count']:7d}")
    extra = f"  loss {report['loss']:.4f}" if "loss" in report else ""
    lines.append(f"top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}{extra}")
    return "\n".join(lines)


def cross_entropy(probs, labels):
    p = np.clip(np.asarray(probs)[np.arange(len(labels)), np.asarray(labels).astype(int)], 1e-7, 1.0)
    return float(-np.log(p).mean())
