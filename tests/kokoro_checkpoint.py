"""Write a Kokoro-82M checkpoint with the real architecture and random weights, in Kokoro's
own file layout, so the engine loads it through the real `kokoro` code path.

The shape is the public hexgrad/Kokoro-82M config.json (hidden_dim 512, style_dim 128,
n_token 178, n_layer 3, dim_in 64, n_mels 80, max_dur 50, iSTFTNet 10x6 upsampling with a
20-point iSTFT at hop 5, PL-BERT 768 hidden / 12 heads / 2048 intermediate / 12 layers / 512
positions); the parameter count comes out at 81.8 M like the real model's, so compute, memory
and timings are real. Voice packs are (510, 1, 256) as the published ones are. Two things are
chosen rather than random: the vocabulary maps the phoneme symbols misaki emits (the real one
holds the same kinds of symbols in 178 ids), and the duration head is set to about two frames
per phoneme, about as long as real speech, so a random model does not speak for minutes.
Only the sound is noise.

`--v1.1-zh` writes the layout of hexgrad/Kokoro-82M-v1.1-zh instead: the same architecture,
`kokoro-v1_1-zh.pth`, its kind of voice names, and a vocabulary that holds what misaki's v1.1
Chinese frontend emits (zhuyin and its finals, tone digits; read from misaki's own ZH_MAP).

Run: python tests/kokoro_checkpoint.py [--v1.1-zh] DIR ...   (under an interpreter with `kokoro`)
Each DIR gets a checkpoint, of v1.1-zh's layout when the flag comes before it; one run makes
them all, so torch and kokoro are imported once.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

CONFIG = {
    "hidden_dim": 512,
    "style_dim": 128,
    "n_token": 178,
    "n_layer": 3,
    "dim_in": 64,
    "n_mels": 80,
    "max_dur": 50,
    "dropout": 0.2,
    "text_encoder_kernel_size": 5,
    "max_conv_dim": 512,
    "multispeaker": True,
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    },
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
}
SYMBOLS = (
    ';:,.!?¡¿—…"«»“” ()'
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    "ɑɐɒæβɔɕçɗɖðʤəɚɛɜɟɡɥɨɪʝɯɰŋɳɲɴøɸθœɹɾɻʁɽʂʃʈʧʊʋʌɣɤχʎʒʔˈˌːʰʲ↓↑→↗↘ᵊᵻʦʨꭧ"
)
VOICES = ("zf_xiaobei", "zf_xiaoni", "zm_yunjian", "af_heart", "am_adam")
VOICES_V11 = ("zf_001", "zf_003", "zm_010", "af_maple")
COMPONENTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
FRAMES_PER_PHONEME = 2.0
QUIETER = 4.0
"""Random weights come out at ~0.18 RMS with peaks near full scale; a real voice sits lower, and
a peak over 1 is scaled down by the worker, which would hide the emotion's gain."""


def symbols(v11: bool) -> str:
    """The vocabulary's symbols: v1.1-zh trades the capitals for misaki's zhuyin."""
    if not v11:
        return SYMBOLS
    from misaki.zh_frontend import ZH_MAP  # noqa: PLC0415

    return "".join(c for c in SYMBOLS if not c.isupper()) + "".join(ZH_MAP.values())


def write_checkpoint(folder: Path, seed: int = 0, v11: bool = False) -> Path:
    """Write config.json, the .pth and voices/*.pt into `folder`; returns it."""
    import torch  # noqa: PLC0415 (only under the kokoro interpreter)
    from kokoro import KModel  # noqa: PLC0415

    (folder / "voices").mkdir(parents=True, exist_ok=True)
    vocab = {s: i + 1 for i, s in enumerate(dict.fromkeys(symbols(v11)))}  # 0 is padding
    assert len(vocab) < CONFIG["n_token"], len(vocab)  # type: ignore[operator]  # an int
    config = {**CONFIG, "vocab": vocab}
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    torch.manual_seed(seed)
    empty = folder / "empty.pth"
    torch.save({}, empty)  # KModel loads each component found here: none, so all stay random
    try:
        model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=str(empty))
    finally:
        empty.unlink()
    with torch.no_grad():
        duration = model.predictor.duration_proj.linear_layer
        duration.weight.mul_(0.01)
        duration.bias.fill_(float(torch.logit(torch.tensor(FRAMES_PER_PHONEME / 50))))
        generator = model.decoder.generator  # iSTFTNet: magnitude = exp(conv_post[:n_fft/2+1])
        magnitude = generator.conv_post.bias[: generator.post_n_fft // 2 + 1]
        magnitude.sub_(math.log(QUIETER))
    parts = {name: getattr(model, name).state_dict() for name in COMPONENTS}
    torch.save(parts, folder / ("kokoro-v1_1-zh.pth" if v11 else "kokoro-v1_0.pth"))
    for voice in VOICES_V11 if v11 else VOICES:
        torch.save(torch.randn(510, 1, 256) * 0.15, folder / "voices" / f"{voice}.pt")
    return folder


def main(args: list[str]) -> None:
    v11 = False
    for arg in args:
        if arg == "--v1.1-zh":
            v11 = True
            continue
        print(write_checkpoint(Path(arg), v11=v11))
        v11 = False


if __name__ == "__main__":
    main(sys.argv[1:])
