"""The ``qembed.*`` GGUF metadata keys that make a converted file self-describing.

Written by the converter, read by the Embedder and ``qembed-gguf info`` (which fall back to the
registry for files converted elsewhere).
"""

FORMAT_VERSION = 1

FORMAT = "qembed.format_version"      # uint32: version of this key set
MRL_MIN_DIM = "qembed.mrl_min_dim"     # uint32: smallest valid Matryoshka output dim
QUERY_TEMPLATE = "qembed.query_template"  # string with {task} and {text}
DEFAULT_TASK = "qembed.default_task"   # string: the instruction used when none is given
SOURCE = "qembed.source"               # string: hub id or folder name the file was converted from
CONVERTER = "qembed.converter"         # string: "qembed-gguf <version>"
INTEGRITY = "qembed.integrity.blake2b"  # string: 64 hex digits, BLAKE2b-256 of the file with this value as '0's
KIND = "qembed.kind"                    # string: "embedding" or "reranker" (absent in older files: embedding)
