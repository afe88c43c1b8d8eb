"""The names the library's options take, in a module that imports nothing: the command line offers them as choices
(and `--help` lists them) without loading jax or the modules that act on them."""

POOLINGS = ("mean", "max", "last")
TOKENS = ("all", "text", "image")
DTYPE_NAMES = ("float32", "bfloat16")
DEFENSES = ("safecode", "shield", "adashield", "ecso", "prober-gate", "mop", "daco")
VERDICTS = ("probe", "self", "endpoint", "unsafe", "safe")
IMAGE_ABLATIONS = ("blank", "noise")
NEUTRAL_PROMPT = "Describe the image."

FORMATS = {
    "native": "the project's JSONL (MM-TOXIC-QA style): id, prompt, image, label, ...",
    "mmsafetybench": "an MM-SafetyBench data root with processed_questions/ and imgs/",
    "sgm-sheet": "the SGM release's .xlsx/.csv sheet: name, prompt, output, label",
    "jailbreakv": "JailBreakV-28K's CSV: id, jailbreak_query, redteam_query, format, policy, image_path",
    "mcq": "multiple-choice VQA (MMBench-like): question, A, B, C, D, answer, image",
}
