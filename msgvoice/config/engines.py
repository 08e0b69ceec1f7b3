"""The sections of the engines that take more than a voice: Kokoro, IndexTTS2 and a remote
OpenAI-compatible server (one frozen dataclass per TOML table, a docstring per key)."""

from __future__ import annotations

from dataclasses import dataclass

from msgvoice.config.sections import key


@dataclass(frozen=True)
class RemoteConfig:
    base_url: tuple[str, ...] = ()
    """OpenAI-compatible speech servers for tts.engine = "remote" (requests spread over them)."""
    model: str = "tts-1"
    """The model asked for."""
    api_key_env: str = "MSGVOICE_REMOTE_KEY"
    """Environment variable holding the servers' API key (read by the worker)."""
    msgvoice: bool = True
    """The servers are msgvoice: send emotion vectors and seeds (else only speed)."""
    timeout_s: float = key(60.0, lo=1, hi=3600)
    """Longest wait for one server's answer before the next is asked."""
    down_max_s: float = key(60.0, lo=1, hi=3600)
    """Longest a failed server is skipped before it is tried again."""


@dataclass(frozen=True)
class KokoroConfig:
    model_dir: str = ""
    """Folder with Kokoro's config.json, .pth and voices/*.pt; empty = the Hugging Face cache."""
    repo_id: str = "hexgrad/Kokoro-82M"
    """Hub repository whose cached snapshot is used (and whose Chinese G2P version applies)."""
    device: str = key("auto", choices=("auto", "cuda", "mps", "cpu"))
    """Where the model runs; auto = CUDA, else MPS, else CPU."""
    precision: str = key("auto", choices=("auto", "fp32", "bf16"))
    """Vocoder arithmetic on a CPU: auto = bf16 where native (AVX512-BF16, AMX), else fp32."""


@dataclass(frozen=True)
class IndexTtsConfig:
    model_dir: str = "checkpoints"
    """IndexTTS2 checkpoints folder (config.yaml, gpt.pth, s2mel.pth, bpe.model, ...)."""
    cfg_path: str = ""
    """IndexTTS2 config file; empty = <model_dir>/config.yaml."""
    ref_audio: str = ""
    """Reference voice clip (any format soundfile reads); converted once to 16 kHz mono."""
    voices_dir: str = ""
    """Folder of named reference clips (name.wav, name.flac, ...) selectable as the voice."""
    device: str = key("auto", choices=("auto", "cuda", "mps", "cpu"))
    """Where the model runs."""
    precision: str = key("auto", choices=("auto", "fp32", "fp16", "bf16"))
    """auto: bf16 on sm_80+, fp16 on sm_70/75, fp32 on CPU and MPS."""
    emo_alpha: float = key(0.65, lo=0, hi=1)
    """Emotion weight (IndexTTS2 clamps to 0-1; 0.65 is its web UI's default, timbre kept)."""
    use_emo_text: bool = False
    """Let IndexTTS2 read emotion from text itself (slow, unstable; off: vectors are used)."""
    use_accel: bool = False
    """IndexTTS2's accelerated GPT2 engine (CUDA)."""
    use_torch_compile: bool = False
    """torch.compile the model (long warm-up; pays off for long-running workers)."""
    use_cuda_kernel: bool = True
    """BigVGAN's fused CUDA activation kernel (CUDA only)."""
    use_deepspeed: bool = False
    """DeepSpeed inference for the GPT (if installed)."""
    top_k: int = key(30, lo=0)
    """GPT sampling top-k."""
    top_p: float = key(0.8, lo=0, hi=1)
    """GPT sampling top-p."""
    temperature: float = key(0.8, lo=0.01, hi=5)
    """GPT sampling temperature."""
    max_mel_tokens: int = key(1500, lo=50)
    """Longest GPT output per segment."""
    max_text_tokens_per_segment: int = key(120, lo=20)
    """IndexTTS2's own segmenting of the text it is given."""
    interval_silence_ms: int = key(200, lo=0, hi=5000)
    """Silence IndexTTS2 puts between its own segments."""
    tf32: bool = True
    """Allow TF32 matmuls on Ampere and newer GPUs."""
    cudnn_benchmark: bool = False
    """cuDNN autotuning (helps fixed shapes, hurts varied ones)."""
    empty_cache: bool = True
    """gc and empty the CUDA/MPS cache after each job."""
    max_seq_length: int = key(0, lo=0)
    """GPT cache length (0 = upstream default 8192; the seeds suggest 4096)."""
    diffusion_steps: int = key(25, lo=1, hi=200)
    """S2Mel diffusion steps (25 upstream; 15-20 is faster)."""
    num_beams: int = key(3, lo=1, hi=10)
    """GPT beam count (3 upstream; 1 is much faster)."""
    mps_memory_fraction: float = key(0.0, lo=0, hi=1)
    """Cap on MPS memory for the worker (0 = no cap; an emergency brake)."""
