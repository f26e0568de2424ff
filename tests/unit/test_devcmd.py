"""`camstack cmd` accepts exactly what the firmware's command parser accepts.

The firmware's own ``parse_command`` (command.cpp + json.cpp) is compiled with g++ into
a small driver and fed the same payloads as :func:`camstack.devcmd.validate`; the two
must agree on every one (one documented difference: the tool also refuses a quality
the firmware would refuse later, when applying the settings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from camstack.devcmd import CommandError, build, validate

REPO = Path(__file__).resolve().parents[2]
CAMLINK = REPO / "firmware" / "lib" / "camlink" / "src"

PAYLOADS: list[str] = [
    '{"cmd":"set","frame_size":"SVGA","jpeg_quality":12,"interval_ms":1000}',
    '{"cmd":"set","interval_ms":100}', '{"cmd":"set","interval_ms":99}',
    '{"cmd":"set","interval_ms":86400000}', '{"cmd":"set","interval_ms":86400001}',
    '{"cmd":"set","jpeg_quality":4}', '{"cmd":"set","jpeg_quality":3}',
    '{"cmd":"set","jpeg_quality":63}', '{"cmd":"set","jpeg_quality":64}',
    '{"cmd":"set","jpeg_quality":"12"}', '{"cmd":"set","jpeg_quality":true}',
    '{"cmd":"set","frame_size":"UXGA"}', '{"cmd":"set","frame_size":"svga"}',
    '{"cmd":"set","frame_size":"4K"}', '{"cmd":"set"}', '{"cmd":"set","fps":3}',
    '{"cmd":"set","vflip":true,"hmirror":false,"aec":0,"agc":1,"awb":true}',
    '{"cmd":"set","vflip":2}', '{"cmd":"set","vflip":"yes"}',
    '{"cmd":"set","aec_value":1200,"agc_gain":30,"wb_mode":4}',
    '{"cmd":"set","aec_value":1201}', '{"cmd":"set","agc_gain":-1}', '{"cmd":"set","wb_mode":5}',
    '{"cmd":"reboot"}', '{"cmd":"status"}', '{"cmd":"reboot","now":true}',
    '{"cmd":"selfdestruct"}', '{"interval_ms":1000}', '{"cmd":5}',
    '{"cmd":"ota","url":"https://h/fw.bin","sha256":"' + "ab" * 32 + '","size":1000}',
    '{"cmd":"ota","url":"http://h/fw.bin","sha256":"' + "ab" * 32 + '","size":1000}',
    '{"cmd":"ota","url":"https://h/fw.bin","sha256":"' + "zz" * 32 + '","size":1000}',
    '{"cmd":"ota","url":"https://h/fw.bin","sha256":"' + "ab" * 32 + '","size":0}',
    '{"cmd":"ota","url":"https://h/fw.bin","size":1000}',
    '{"cmd":"ota","url":"https://' + "h" * 130 + '","sha256":"' + "ab" * 32 + '","size":1}',
]
TOOL_STRICTER = {'{"cmd":"set","frame_size":"UXGA","jpeg_quality":4}'}
"""Accepted by the parser, refused by the firmware's check_settings when applied."""


@pytest.fixture(scope="module")
def firmware_parser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    out = tmp_path_factory.mktemp("fwcmd")
    src = out / "driver.cpp"
    src.write_text(
        '#include <iostream>\n#include <string>\n#include "camlink/command.h"\n'
        "int main(){std::string line;while(std::getline(std::cin,line)){"
        "camlink::Command c;std::string err;"
        "bool ok=camlink::parse_command(reinterpret_cast<const uint8_t*>(line.data()),"
        'line.size(),&c,&err);std::cout<<(ok?"ok":"err: "+err)<<"\\n";}}\n')
    exe = out / "driver"
    subprocess.run(["g++", "-std=c++17", "-O0", f"-I{CAMLINK}", "-o", str(exe), str(src),
                    str(CAMLINK / "camlink" / "command.cpp"),
                    str(CAMLINK / "camlink" / "json.cpp")], check=True, timeout=300)
    return exe


def _tool_accepts(text: str) -> bool:
    try:
        validate(json.loads(text))
    except CommandError:
        return False
    return True


def test_tool_and_firmware_agree(firmware_parser: Path) -> None:
    payloads = [*PAYLOADS, *TOOL_STRICTER]
    res = subprocess.run([str(firmware_parser)], input="\n".join(payloads) + "\n",
                         capture_output=True, text=True, check=True, timeout=30)
    verdicts = res.stdout.splitlines()
    assert len(verdicts) == len(payloads)
    disagree = []
    for text, verdict in zip(payloads, verdicts, strict=True):
        firmware_ok = verdict == "ok"
        if text in TOOL_STRICTER:
            assert firmware_ok and not _tool_accepts(text), text
        elif firmware_ok != _tool_accepts(text):
            disagree.append(f"{text}: firmware {verdict}, tool {_tool_accepts(text)}")
    assert disagree == []
    assert verdicts.count("ok") >= 8 and len(verdicts) - verdicts.count("ok") >= 15


def test_verbs_build_the_commands() -> None:
    assert build("set", interval_ms=1000, frame_size="SVGA", jpeg_quality=12, vflip=None) == {
        "cmd": "set", "interval_ms": 1000, "frame_size": "SVGA", "jpeg_quality": 12}
    assert build("reboot") == {"cmd": "reboot"}
    assert build('{"cmd":"status"}') == {"cmd": "status"}
    with pytest.raises(CommandError, match="set without settings"):
        build("set")
    with pytest.raises(CommandError, match="takes no options"):
        build("reboot", interval_ms=1000)
    with pytest.raises(CommandError, match="not valid JSON"):
        build("{cmd: set}")
    with pytest.raises(CommandError, match="unknown cmd"):
        build("restart")
