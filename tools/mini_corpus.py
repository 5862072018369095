"""The English corpus that ``tools/train_mini.py`` distils the bundled ``mini`` model on.

Sources (all offline, Debian packages; ``apt-get install wordnet-base dict-foldoc dict-jargon``):

* WordNet 3.0 (``wordnet-base``, ``/usr/share/wordnet/data.{noun,verb,adj,adv}``; WordNet licence):
  per synset its lemmas, its gloss's definition and its quoted example sentences;
* FOLDOC, the Free On-line Dictionary of Computing (``dict-foldoc``, GFDL) and the Jargon File
  (``dict-jargon``, public domain): per headword the first paragraphs of its entry.

Every entry (a synset, a headword) goes to the held-out split or the training split by a seeded
hash of its id, so no text of a held-out entry is ever trained on; texts are deduplicated after
normalisation, and a training text equal to any held-out text is dropped. The held-out split gives
three retrieval sets (query → passage), each with every held-out passage of its source as a
candidate:

* ``wordnet-term``: a lemma ("river bank") → its synset's definition;
* ``wordnet-example``: an example sentence → the definition of the sense it illustrates;
* ``foldoc-term``: a FOLDOC / Jargon headword → its entry.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
DICTD = Path("/usr/share/dictd")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
MAX_PASSAGE_CHARS = 480


@dataclasses.dataclass(frozen=True)
class Entry:
    """One dictionary entry: an id (``wn:n00001740``, ``foldoc:alt``), its query-like names and texts."""

    id: str
    source: str                 # wordnet | foldoc | jargon
    names: tuple[str, ...]      # lemmas / headword: short, query-like
    passage: str                # the definition / the entry's first paragraphs
    examples: tuple[str, ...] = ()


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def wordnet_entries(root: Path = WORDNET) -> list[Entry]:
    """Every WordNet synset with a definition, in file order."""
    out = []
    for name, pos in _POS.items():
        with open(root / f"data.{name}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue                      # the licence header
                head, gloss = line.split("|", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = tuple(dict.fromkeys(
                    re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(n_words)))
                examples = tuple(_clean(x) for x in re.findall(r'"([^"]{8,})"', gloss))
                definition = _clean(gloss.split('; "')[0].split('"')[0]).rstrip(";").strip()
                if len(definition) >= 8:
                    out.append(Entry(f"wn:{pos}{fields[0]}", "wordnet", lemmas, definition, examples))
    return out


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def _dictd_body(text: str) -> str:
    """A dictd entry's body as plain prose: links, categories, pronunciations, dates, references out."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        para = _clean(para)
        para = re.sub(r"<[^>]{1,40}>", "", para)                  # <programming>
        para = re.sub(r"/[^/\s][^/]{0,30}/", "", para)             # /awlt/ pronunciations
        para = re.sub(r"\{([^{}]*)\}", r"\1", para)               # {hyperlinks}
        para = re.sub(r"\(\d{4}-\d{2}-\d{2}\)", "", para)          # (1994-11-24)
        para = _clean(para)
        if len(para) < 20 or para.startswith(("[", "See ", "See also", "Home page", "E-mail", "(", "ftp:", "http")):
            continue
        paragraphs.append(para)
    body = " ".join(paragraphs)
    if len(body) > MAX_PASSAGE_CHARS:
        cut = body[:MAX_PASSAGE_CHARS]
        body = cut[: cut.rfind(". ") + 1] if ". " in cut[100:] else cut.rsplit(" ", 1)[0]
    return body


def dictd_entries(name: str, root: Path = DICTD) -> list[Entry]:
    """Every headword of a dictd dictionary (``foldoc``, ``jargon``) with a prose body."""
    data = gzip.open(root / f"{name}.dict.dz").read()
    out, seen = [], set()
    for line in (root / f"{name}.index").read_text("utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00database") or parts[0] in seen:
            continue
        seen.add(parts[0])
        raw = data[_b64(parts[1]): _b64(parts[1]) + _b64(parts[2])].decode("utf-8", errors="replace")
        lines = raw.split("\n", 1)
        head = _clean(lines[0])
        body = _dictd_body(lines[1] if len(lines) > 1 else "")
        if len(head) >= 2 and len(body) >= 40 and not head.startswith(("-", "!", "#")):
            out.append(Entry(f"{name}:{head.lower()}", name, (head,), body))
    return out


def norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def held_out(entry_id: str, seed: int, percent: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{entry_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < percent


@dataclasses.dataclass
class Corpus:
    train: list[Entry]
    held: list[Entry]

    def training_texts(self) -> tuple[list[str], list[str]]:
        """(passages and examples, query-like names) of the training split, deduplicated, none held out."""
        held = {norm(t) for e in self.held for t in (*e.names, e.passage, *e.examples)}
        seen: set[str] = set()

        def keep(text: str) -> bool:
            key = norm(text)
            if not key or key in held or key in seen:
                return False
            seen.add(key)
            return True

        passages = [t for e in self.train for t in (e.passage, *e.examples) if keep(t)]
        names = [t for e in self.train for t in e.names if keep(t)]
        return passages, names

    def retrieval_sets(self, per_set: int = 600) -> dict[str, dict]:
        """The held-out query → passage sets: {name: {"queries": [...], "passages": [...], "answers": [i...]}}."""
        sets = {}
        wn = [e for e in self.held if e.source == "wordnet"]
        dictd = [e for e in self.held if e.source != "wordnet"]
        for name, pool, pairs in (
            ("wordnet-term", wn, lambda e: e.names[:1]),
            ("wordnet-example", wn, lambda e: e.examples[:1]),
            ("foldoc-term", dictd, lambda e: e.names[:1]),
        ):
            passages = list(dict.fromkeys(e.passage for e in pool))
            index = {p: i for i, p in enumerate(passages)}
            counts: dict[str, int] = {}
            for e in pool:
                for q in pairs(e):
                    counts[norm(q)] = counts.get(norm(q), 0) + 1
            queries, answers = [], []
            for e in pool:
                for q in pairs(e):
                    # an ambiguous query (a lemma of two held-out senses) has no single right answer
                    if counts[norm(q)] == 1 and norm(q) not in norm(e.passage):
                        queries.append(q)
                        answers.append(index[e.passage])
            step = max(1, len(queries) // per_set)
            sets[name] = {"queries": queries[::step][:per_set], "answers": answers[::step][:per_set],
                          "passages": passages}
        return sets


def build(seed: int = 0, held_percent: int = 3) -> Corpus:
    entries = wordnet_entries() + dictd_entries("foldoc") + dictd_entries("jargon")
    train, held = [], []
    for e in entries:
        (held if held_out(e.id, seed, held_percent) else train).append(e)
    return Corpus(train, held)
