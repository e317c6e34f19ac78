"""The embedded demo family: a small Llama base and three domain fine-tunes, built offline.

`build_demo_family()` trains it from a seed in minutes on CPU (corpora -> tokenizer -> base ->
prose/code/math fine-tunes -> task and text files); `load_demo_family()` opens a built one.
`demo.synthetic` (not imported here) makes random-weight families of any shape in seconds.
"""

from gptailor_merge.demo.build import BUILD_VERSION, build_demo_family
from gptailor_merge.demo.evaluate import specialisation_table
from gptailor_merge.demo.layout import DemoFamily, default_cache_dir, load_demo_family
from gptailor_merge.demo.presets import PRESETS, DemoPreset

__all__ = [
    "BUILD_VERSION",
    "PRESETS",
    "DemoFamily",
    "DemoPreset",
    "build_demo_family",
    "default_cache_dir",
    "load_demo_family",
    "specialisation_table",
]
