"""JPEG frames in, one H.264 MP4 out, with PyAV (FFmpeg's libraries in-process).

Pipeline: a pool of threads each reads, checks and decodes JPEGs with its own FFmpeg
``mjpeg`` decoder (which has no internal threading of its own) and converts them with
its own swscale context to the video's size in ``yuv420p``, full (JPEG) to limited
(video) range; the calling thread feeds libx264, which runs its own frame threads,
and muxes into MP4 with ``+faststart``. PyAV releases the GIL around decode, scale
and encode, so the stages really run in parallel. Results come back in order through
a bounded window of futures: memory stays flat whatever the batch size.

Camera output is not trusted: frames that are unreadable, fail their CRC, lack SOI
or EOI, or do not decode are skipped and counted by reason. The video's size is the
most common frame size of the batch (read from the JPEG headers before decoding), so
one odd frame at the start of a batch cannot set the size for all the others; frames
of another size are scaled to it. Odd sizes are rounded down to even ones in the same
swscale pass (4:2:0 needs even sides).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal

import av
import av.error
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from config.settings import EncodeSettings
from encoder import jpeg
from encoder.timeline import Timeline

HEADER_PROBE_BYTES = 64 * 1024
"""Bytes read per file to find its SOF before decoding (EXIF blocks come first)."""

# BT.601 (what JPEG uses) tagged explicitly so players do not guess BT.709 for SD sizes.
_AVCOL_SMPTE170M = 6


class MuxError(Exception):
    """The encoder or muxer failed (not a bad input frame: those are skipped)."""


class EncodeCancelledError(Exception):
    """Encoding stopped because the service is shutting down."""


@dataclass(frozen=True)
class FrameInput:
    """One input frame: a file, or bytes already in memory (tests, tools)."""

    ts_ms: int
    path: Path | None = None
    data: bytes | None = None
    crc32: int | None = None


@dataclass(frozen=True)
class EncodeOptions:
    """What the muxer needs from the settings (:meth:`from_settings`)."""

    fps: float = 30.0
    timing: Literal["fixed", "capture"] = "fixed"
    preset: str = "veryfast"
    crf: int = 23
    gop: int = 60
    threads: int = 0
    decode_threads: int = 0
    thumbnail_width: int = 320

    @classmethod
    def from_settings(cls, s: EncodeSettings) -> EncodeOptions:
        """The options of an ``[encode]`` settings section.

        Args:
            s: The section.

        Returns:
            The options.
        """
        return cls(fps=s.fps, timing=s.timing, preset=s.preset, crf=s.crf, gop=s.gop,
                   threads=s.threads, decode_threads=s.decode_threads,
                   thumbnail_width=s.thumbnail_width)

    def shared_by(self, parallel: int, cpus: int) -> EncodeOptions:
        """The options of one of ``parallel`` encodes running at once on ``cpus`` CPUs.

        Thread counts left at 0 ("let FFmpeg choose") would each take every CPU and
        oversubscribe the machine ``parallel`` times; they become ``max(1, cpus //
        parallel)``. Counts set explicitly are kept.
        """
        if parallel <= 1:
            return self
        share = max(1, cpus // parallel)
        return replace(
            self, threads=self.threads or share, decode_threads=self.decode_threads or share)


@dataclass
class MuxResult:
    """What was written."""

    frames_in: int
    frames_written: int
    skipped: Counter[str] = field(default_factory=Counter)
    width: int = 0
    height: int = 0
    encode_seconds: float = 0.0
    thumbnail_jpeg: bytes | None = None

    @property
    def frames_skipped(self) -> int:
        """All skipped frames, whatever the reason."""
        return sum(self.skipped.values())


@dataclass(frozen=True)
class VideoInfo:
    """What a written MP4 says about itself when reopened."""

    codec: str
    frames: int
    width: int
    height: int
    pix_fmt: str
    duration_s: float
    keyframes: int


def decode_threads(requested: int) -> int:
    """Decoder threads to run: ``requested``, or one per usable CPU when 0.

    Args:
        requested: From the settings; 0 means automatic.

    Returns:
        At least 1.
    """
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class FrameDecoder:
    """Read, check, decode and convert one JPEG; callable from many threads at once.

    Each thread gets its own FFmpeg decoder and swscale context (neither is
    thread-safe). Calling it with a :class:`FrameInput` returns a ``yuv420p`` frame of
    the video's size, or the reason the frame is skipped.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self._local = threading.local()

    def _ctx(self) -> tuple[VideoCodecContext, VideoReformatter]:
        state: tuple[VideoCodecContext, VideoReformatter] | None = getattr(
            self._local, "state", None)
        if state is None:
            ctx = av.CodecContext.create("mjpeg", "r")
            # "explode": report damaged entropy data as an error instead of concealing it.
            ctx.options = {"err_detect": "explode"}
            state = (ctx, VideoReformatter())
            self._local.state = state
        return state

    def _reset(self) -> None:
        # A decoder that saw garbage starts over clean.
        self._local.state = None

    def load(self, item: FrameInput) -> bytes | str:
        """Read and check one frame.

        Args:
            item: The frame.

        Returns:
            Its bytes, or the skip reason.
        """
        if item.data is not None:
            data = item.data
        elif item.path is not None:
            try:
                data = item.path.read_bytes()
            except FileNotFoundError:
                return "missing"
            except OSError:
                return "unreadable"
        else:
            return "missing"
        if item.crc32 is not None and zlib.crc32(data) != item.crc32:
            return "crc_mismatch"
        defect = jpeg.structure_defect(data)
        if defect is not None:
            return defect.value
        return data

    def decode(self, data: bytes) -> VideoFrame | str:
        """Decode one JPEG to a raw frame of its own size.

        Args:
            data: JPEG bytes.

        Returns:
            The frame, or the skip reason.
        """
        ctx, _ = self._ctx()
        try:
            frames = ctx.decode(av.Packet(data))
        except (av.error.FFmpegError, ValueError):
            self._reset()
            return "decode_error"
        if not frames:
            self._reset()
            return "decode_error"
        frame: VideoFrame = frames[0]
        if frame.width < 2 or frame.height < 2:
            return "too_small"
        return frame

    def convert(self, frame: VideoFrame) -> VideoFrame:
        """Scale and convert a decoded frame to the video's size and pixel format.

        Args:
            frame: A decoded frame.

        Returns:
            The ``yuv420p`` limited-range frame.
        """
        _, reformatter = self._ctx()
        src_range = (ColorRange.MPEG if frame.color_range == ColorRange.MPEG
                     else ColorRange.JPEG)
        out: VideoFrame = reformatter.reformat(
            frame, self.size[0], self.size[1], "yuv420p",
            src_color_range=src_range, dst_color_range=ColorRange.MPEG,
            interpolation=Interpolation.BICUBIC, threads=1,
        )
        # A decoded JPEG is an intra picture, and libx264 turns every frame marked I
        # into a keyframe: unmarked, x264 chooses (GOP, scene cuts) as it should.
        out.pict_type = PictureType.NONE
        return out

    def __call__(self, item: FrameInput) -> VideoFrame | str:
        """Load, decode and convert one frame.

        Args:
            item: The frame.

        Returns:
            The video frame, or the skip reason.
        """
        data = self.load(item)
        if isinstance(data, str):
            return data
        decoded = self.decode(data)
        if isinstance(decoded, str):
            return decoded
        try:
            return self.convert(decoded)
        except (av.error.FFmpegError, ValueError):
            return "convert_error"


def _header_size(item: FrameInput) -> tuple[int, int] | None:
    if item.data is not None:
        head = item.data[:HEADER_PROBE_BYTES]
    elif item.path is not None:
        try:
            with item.path.open("rb") as fh:
                head = fh.read(HEADER_PROBE_BYTES)
        except OSError:
            return None
    else:
        return None
    return jpeg.frame_size(head)


def choose_size(frames: Sequence[FrameInput]) -> tuple[int, int] | None:
    """The video's size: the most common frame size, rounded down to even sides.

    Sizes come from the JPEG headers. When no header can be read, the first frame
    that decodes sets the size.

    Args:
        frames: The batch.

    Returns:
        ``(width, height)``, or None when no frame has a usable size.
    """
    size = jpeg.most_common_size(_header_size(f) for f in frames)
    if size is None:
        probe = FrameDecoder((2, 2))
        for item in frames:
            data = probe.load(item)
            if isinstance(data, bytes):
                decoded = probe.decode(data)
                if not isinstance(decoded, str):
                    size = (decoded.width, decoded.height)
                    break
    if size is None:
        return None
    return jpeg.even_size(*size)


def _ordered(pool: ThreadPoolExecutor, work: FrameDecoder, frames: Sequence[FrameInput],
             window: int) -> Iterator[VideoFrame | str]:
    """Decode in parallel, yield in input order, never more than ``window`` ahead."""
    pending: deque[Future[VideoFrame | str]] = deque()
    it = iter(frames)
    for item in it:
        pending.append(pool.submit(work, item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(work, nxt))
        yield result


def _thumbnail(frame: VideoFrame, width: int) -> bytes:
    tw = min(width, frame.width)
    th = max(1, round(frame.height * tw / frame.width))
    small = frame.reformat(tw, th, "rgb24", interpolation=Interpolation.AREA,
                           src_color_range=ColorRange.MPEG, dst_color_range=ColorRange.JPEG)
    buf = io.BytesIO()
    small.to_image().save(buf, format="JPEG", quality=80)  # type: ignore[no-untyped-call]
    return buf.getvalue()


def encode_video(frames: Sequence[FrameInput], out: Path | IO[bytes],
                 opts: EncodeOptions, *, cancel: threading.Event | None = None) -> MuxResult:
    """Encode ``frames`` in order into an MP4 at ``out``.

    Nothing is fsynced here; the caller owns durability. A result with
    ``frames_written == 0`` means no frame could be decoded; the file is then a
    header-only MP4 the caller should discard.

    Args:
        frames: Frames in video order.
        out: Destination path, or a seekable binary file object (then without
            ``+faststart``, which re-reads the file by name).
        opts: Codec and timing options.
        cancel: When set, encoding stops between frames (the output is then garbage).

    Returns:
        Counts, size, timing and a JPEG thumbnail of a frame from mid-batch.

    Raises:
        MuxError: The encoder or muxer failed.
        EncodeCancelledError: ``cancel`` was set.
    """
    started = time.perf_counter()
    result = MuxResult(frames_in=len(frames), frames_written=0)
    size = choose_size(frames)
    if size is None:
        result.skipped["no_size"] = len(frames)
        result.encode_seconds = time.perf_counter() - started
        return result
    result.width, result.height = size
    timeline = Timeline(opts.timing, opts.fps)
    workers = decode_threads(opts.decode_threads)
    thumb_at = len(frames) // 2
    thumb: VideoFrame | None = None
    target: Any = str(out) if isinstance(out, Path) else out
    # +faststart moves the index to the front by re-reading the file by name, which a
    # file object has not: there the index stays at the end.
    mux_opts = {"movflags": "+faststart"} if isinstance(out, Path) else {}
    try:
        container = av.open(target, "w", format="mp4", options=mux_opts)
    except (av.error.FFmpegError, OSError) as exc:
        raise MuxError(f"cannot open output: {exc}") from exc
    try:
        stream = container.add_stream("libx264", rate=timeline.rate)
        cc = stream.codec_context
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        cc.time_base = timeline.time_base
        cc.gop_size = opts.gop
        cc.thread_count = opts.threads
        cc.color_range = ColorRange.MPEG
        cc.colorspace = _AVCOL_SMPTE170M
        cc.color_primaries = _AVCOL_SMPTE170M
        cc.color_trc = _AVCOL_SMPTE170M
        stream.options = {"preset": opts.preset, "crf": str(opts.crf)}
        durations: dict[int, int] = {}

        def mux(frame: VideoFrame | None) -> None:
            for packet in stream.encode(frame):
                # The mp4 muxer takes sample durations from dts steps, except for the
                # last sample and the edit list's end: give every packet its own.
                if packet.pts is not None:
                    packet.duration = durations.pop(packet.pts, 0)
                container.mux(packet)

        held: VideoFrame | None = None
        held_pts = 0
        work = FrameDecoder(size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpegdec") as pool:
            for idx, (item, res) in enumerate(zip(frames, _ordered(pool, work, frames,
                                                                   2 * workers + 2),
                                                  strict=True)):
                if cancel is not None and cancel.is_set():
                    raise EncodeCancelledError
                if isinstance(res, str):
                    result.skipped[res] += 1
                    continue
                pts = timeline.next_pts(item.ts_ms)
                res.pts = pts
                res.time_base = timeline.time_base
                if thumb is None and idx >= thumb_at:
                    thumb = res
                # One frame is held back so its duration (the gap to the next) is known
                # before it is encoded.
                if held is not None:
                    durations[held_pts] = pts - held_pts
                    mux(held)
                held, held_pts = res, pts
                result.frames_written += 1
        if held is not None:
            durations[held_pts] = timeline.last_duration()
            mux(held)
            thumb = thumb or held
        if result.frames_written:
            mux(None)
    except av.error.FFmpegError as exc:
        with contextlib.suppress(Exception):
            container.close()
        raise MuxError(f"encoding failed: {exc}") from exc
    except BaseException:
        with contextlib.suppress(Exception):
            container.close()
        raise
    try:
        container.close()
    except av.error.FFmpegError as exc:
        raise MuxError(f"finishing the MP4 failed: {exc}") from exc
    if thumb is not None:
        result.thumbnail_jpeg = _thumbnail(thumb, opts.thumbnail_width)
    result.encode_seconds = time.perf_counter() - started
    return result


def probe_video(src: Path | IO[bytes]) -> VideoInfo:
    """Reopen an MP4 and read what it really holds, demuxing every packet.

    Args:
        src: Path or binary file object.

    Returns:
        Codec, counted frames, size, pixel format, duration and keyframe count.

    Raises:
        MuxError: Not a readable video.
    """
    target: Any = str(src) if isinstance(src, Path) else src
    try:
        with av.open(target, "r") as container:
            if not container.streams.video:
                raise MuxError("no video stream")
            stream = container.streams.video[0]
            frames = keyframes = 0
            for packet in container.demux(stream):
                if packet.size:
                    frames += 1
                    keyframes += int(packet.is_keyframe)
            duration_s = (container.duration or 0) / av.time_base
            if not duration_s and stream.duration is not None and stream.time_base:
                duration_s = float(stream.duration * Fraction(stream.time_base))
            return VideoInfo(
                codec=stream.codec_context.name, frames=frames, width=stream.width,
                height=stream.height, pix_fmt=stream.format.name if stream.format else "",
                duration_s=duration_s, keyframes=keyframes,
            )
    except av.error.FFmpegError as exc:
        raise MuxError(f"unreadable video: {exc}") from exc
