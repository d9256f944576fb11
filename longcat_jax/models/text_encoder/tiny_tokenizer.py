"""A small umT5-style sentencepiece tokenizer, trained on the spot from a fixed built-in text.

The CLI's built-in model (random weights, no download) and the tests need a real tokenizer that
loads through the same code path as a checkpoint's `tokenizer/` folder. Training a unigram
model on the text below takes well under a second and, single-threaded on a fixed input, gives
the same model every time. Ids follow umT5: pad 0, end-of-sequence 1, unknown 2, no BOS.
"""

from __future__ import annotations

import io
from pathlib import Path

from longcat_jax.models.text_encoder.tokenizer import SENTENCEPIECE_MODEL, PromptTokenizer, load_tokenizer

_TRAINING_TEXT = """\
A cat walks slowly across a sunny kitchen floor and stops to look at the camera.
A red car drives along a winding mountain road at sunset, with clouds over the valley.
Two children play with a yellow ball on a sandy beach while waves roll onto the shore.
A chef chops fresh vegetables on a wooden board in a busy restaurant kitchen.
The camera pans over a quiet city street at night, neon signs reflecting in the rain.
A dog jumps into a lake and swims back holding a stick in its mouth.
An old man reads a newspaper on a park bench as pigeons gather around his feet.
A hot air balloon rises above green fields in the early morning light.
A woman in a blue dress dances in an empty ballroom under a crystal chandelier.
Snow falls gently on a small wooden cabin surrounded by tall pine trees.
A train crosses a long stone bridge over a deep river gorge.
A close-up of coffee being poured into a white cup, steam rising slowly.
A robot assembles small parts on a factory line with precise, quick movements.
Fireworks burst over a harbor, their colors mirrored in the dark water.
A horse gallops through a meadow full of wild flowers on a windy afternoon.
A astronaut floats inside a space station, looking out at the blue planet below.
A street musician plays the violin while people walk past in a crowded square.
Leaves fall from a maple tree in autumn, covering the path in orange and gold.
A surfer rides a large wave, spray flying behind the board.
A bird builds a nest on a branch, carrying twigs one by one.
Static shot, high quality, cinematic lighting, detailed textures, smooth motion.
Blurry, low quality, distorted faces, overexposed, static frames, watermark, text.
"""


def build_tiny_tokenizer(folder: str | Path, *, vocab_size: int = 192) -> PromptTokenizer:
    """Trains the tiny tokenizer into `folder/spiece.model` (created if needed) and loads it from there.

    `vocab_size` is the number of pieces (pad, eos and unk included); the built-in text supports
    up to 240. The result is identical for identical arguments.
    """
    import sentencepiece

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(_TRAINING_TEXT.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (folder / SENTENCEPIECE_MODEL).write_bytes(model.getvalue())
    return load_tokenizer(folder)
