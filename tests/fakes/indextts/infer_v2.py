"""A stand-in for indextts2-cli 1.0.2's `indextts.infer_v2.IndexTTS2`: same constructor and
`infer` signatures, the same generation-kwargs handling (unknown ones reach the GPT's generate
and fail there), the same stage-timing printout, and the same in-memory result shape:
(22050, int16 array of shape (samples, 1))."""

from __future__ import annotations

import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fakelog import record

SAMPLING_RATE = 22050


class _Estimator:
    def setup_caches(self, max_batch_size: int, max_seq_length: int) -> None:
        record("setup_caches", max_batch_size=max_batch_size, max_seq_length=max_seq_length)


class IndexTTS2:
    def __init__(  # noqa: PLR0917 (upstream's signature, positional parameters and all)
        self,
        cfg_path="checkpoints/config.yaml",
        model_dir="checkpoints",
        use_fp16=False,
        device=None,
        use_cuda_kernel=None,
        use_deepspeed=False,
        use_accel=False,
        use_torch_compile=False,
    ):
        record(
            "init",
            cfg_path=cfg_path,
            model_dir=model_dir,
            use_fp16=use_fp16,
            device=device,
            use_cuda_kernel=use_cuda_kernel,
            use_deepspeed=use_deepspeed,
            use_accel=use_accel,
            use_torch_compile=use_torch_compile,
        )
        self.s2mel = SimpleNamespace(models={"cfm": SimpleNamespace(estimator=_Estimator())})

    def infer(  # noqa: PLR0917 (upstream's signature)
        self,
        spk_audio_prompt,
        text,
        output_path,
        emo_audio_prompt=None,
        emo_alpha=1.0,
        emo_vector=None,
        use_emo_text=False,
        emo_text=None,
        use_random=False,
        interval_silence=200,
        verbose=False,
        max_text_tokens_per_segment=120,
        stream_return=False,
        more_segment_before=0,
        **generation_kwargs,
    ):
        with wave.open(str(spk_audio_prompt)) as ref:
            prompt = {"rate": ref.getframerate(), "channels": ref.getnchannels()}
        record(
            "infer",
            spk_audio_prompt=Path(spk_audio_prompt).name,
            prompt=prompt,
            text=text,
            output_path=output_path,
            emo_audio_prompt=emo_audio_prompt,
            emo_alpha=emo_alpha,
            emo_vector=emo_vector,
            use_emo_text=use_emo_text,
            emo_text=emo_text,
            use_random=use_random,
            interval_silence=interval_silence,
            verbose=verbose,
            max_text_tokens_per_segment=max_text_tokens_per_segment,
            stream_return=stream_return,
            more_segment_before=more_segment_before,
            generation_kwargs=dict(generation_kwargs),
        )
        for known in (
            "do_sample",
            "top_p",
            "top_k",
            "temperature",
            "length_penalty",
            "num_beams",
            "repetition_penalty",
            "max_mel_tokens",
        ):
            generation_kwargs.pop(known, None)
        if generation_kwargs:  # the real one hands these to transformers' generate()
            raise ValueError(
                f"The following `model_kwargs` are not used by the model: {list(generation_kwargs)}"
            )
        seconds = 0.12 * len(text)
        t = np.arange(int(SAMPLING_RATE * seconds)) / SAMPLING_RATE
        wav = np.clip(32767 * 0.5 * np.sin(2 * np.pi * 180 * t), -32767.0, 32767.0)
        print(">> gpt_gen_time: 0.40 seconds")
        print(">> gpt_forward_time: 0.05 seconds")
        print(">> s2mel_time: 0.20 seconds")
        print(">> bigvgan_time: 0.10 seconds")
        print(">> Total inference time: 0.80 seconds")
        print(f">> Generated audio length: {seconds:.2f} seconds")
        print(f">> RTF: {0.8 / seconds:.4f}")
        wav_data = wav.astype(np.int16)[np.newaxis, :].T
        return (SAMPLING_RATE, wav_data)
