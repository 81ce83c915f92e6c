"""DTMF for the media engine: key presses from RFC 4733 events, SIP INFO bodies and tones.

- `media.dtmf.rfc4733`: `EventReceiver` (one per received telephone-event stream) and
  `event_packets` (the payloads that send a press);
- `media.dtmf.info`: `parse_info` and `info_body` for SIP INFO;
- `media.dtmf.inband`: `InbandDetector` (Goertzel, vectorised over all sessions of a worker)
  and `tone` (the audio of a key);
- `media.dtmf.digit`: `Digit`, what each of them reports, and `DIGITS`.

Import the names from here; the modules are split by carrier.
"""

from media.dtmf.digit import DIGITS, Digit
from media.dtmf.inband import InbandDetector, tone
from media.dtmf.info import info_body, parse_info
from media.dtmf.rfc4733 import EventReceiver, event_packets

__all__ = [
    "DIGITS",
    "Digit",
    "EventReceiver",
    "InbandDetector",
    "event_packets",
    "info_body",
    "parse_info",
    "tone",
]
