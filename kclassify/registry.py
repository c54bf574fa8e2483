"""One small registry pattern shared by models, augmentations, data sources and schedules."""
import difflib

from kclassify.errors import KClassifyError


class UnknownName(KClassifyError):
    """A name that no registry entry has."""


class Registry:
    """Maps names to builder callables; `get` suggests close matches for typos."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name=None, **info):
        """Decorator: register `fn` under `name` (default: its __name__) with optional metadata."""

        def deco(fn):
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = (fn, info)
            return fn

        return deco

    def add(self, name, fn, **info):
        """Register without a decorator (for entries generated from tables)."""
        self.register(name, **info)(fn)

    def get(self, name):
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}{suggest(name, self.names())}")
        return self._entries[name][0]

    def info(self, name):
        self.get(name)
        return self._entries[name][1]

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries


def suggest(word, candidates):
    """' (did you mean X?)' or a list of valid names when nothing is close."""
    # difflib's ratio alone ranks 'resnet32' above 'resnet20' for 'resnet2O'; the fewest edits decide first.
    close = sorted(difflib.get_close_matches(str(word), list(candidates), n=5, cutoff=0.6),
                   key=lambda name: edit_distance(str(word).lower(), name.lower()))
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; valid: {', '.join(sorted(candidates))}"


def edit_distance(a, b):
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
