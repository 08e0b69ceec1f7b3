"""IndexTTS2's reference voices: clips that give a voice its sound, prepared once, in the worker."""

from __future__ import annotations

import hashlib
from pathlib import Path

from msgvoice.worker.protocol import EngineUnavailable

REF_RATE = 16_000
"""What IndexTTS2 reads its reference clip at."""
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class Voices:
    """Reference clips: the configured one or a name from the voices folder, converted once
    to 16 kHz mono WAV and cached by content hash (so a renamed or re-saved clip is reused,
    and a changed clip at the same path is not)."""

    def __init__(self, ref_audio: str, voices_dir: str, cache_dir: Path) -> None:
        self.ref_audio = Path(ref_audio).expanduser() if ref_audio else None
        self.voices_dir = Path(voices_dir).expanduser() if voices_dir else None
        self.cache_dir = cache_dir
        if self.ref_audio is not None and not self.ref_audio.is_file():
            raise EngineUnavailable(
                f"reference clip {self.ref_audio} not found "
                "(set indextts.ref_audio / INDEXTTS_REF_AUDIO)"
            )
        if self.ref_audio is None and (self.voices_dir is None or not self.voices_dir.is_dir()):
            raise EngineUnavailable(
                "IndexTTS2 needs a reference voice: set indextts.ref_audio "
                "(INDEXTTS_REF_AUDIO) or indextts.voices_dir"
            )

    def source(self, name: str | None) -> Path:
        """The clip for a voice name (None or unknown name → the configured clip)."""
        if name and self.voices_dir is not None:
            for suffix in AUDIO_SUFFIXES:
                candidate = self.voices_dir / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
        if self.ref_audio is None:
            raise ValueError(f"no voice named {name!r} in {self.voices_dir}")
        return self.ref_audio

    def names(self) -> list[str]:
        """The voice names on offer: `default` (the configured clip) and the folder's clips."""
        folder = self.voices_dir
        clips = (
            {p.stem for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
            if folder is not None and folder.is_dir()
            else set()
        )
        return (["default"] if self.ref_audio is not None else []) + sorted(clips)

    def prepared(self, name: str | None) -> str:
        """Path of the 16 kHz mono WAV for a voice, made on first use."""
        import soundfile as sf  # noqa: PLC0415 (worker-side dependencies, loaded on demand)
        import soxr  # noqa: PLC0415

        clip = self.source(name)
        digest = hashlib.sha256(clip.read_bytes()).hexdigest()[:24]
        target = self.cache_dir / f"ref-{digest}.wav"
        if not target.exists():
            data, rate = sf.read(str(clip), dtype="float32", always_2d=True)
            mono = data.mean(axis=1)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part.wav")
            sf.write(str(partial), soxr.resample(mono, rate, REF_RATE), REF_RATE, subtype="PCM_16")
            partial.replace(target)
        return str(target)
