#!/usr/bin/env python3
"""Writes testdata/wechatpay-aead-vector.json: a WeChat Pay notification
resource encrypted by an implementation independent of ours (Python's
`cryptography` AESGCM), so that both the simulator's encryption and the
front door's decryption are checked against something they did not make.

Run once; the output is committed. Re-running gives the same file: the key,
nonce and plaintext are fixed (test values, not secrets)."""
import base64
import json
import pathlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

key = b"0123456789abcdefABCDEF0123456789"  # APIv3 key: 32 ASCII bytes
nonce = b"fdasflkja484"  # 12 ASCII bytes, as WeChat Pay sends
associated_data = b"transaction"
plaintext = json.dumps(
    {
        "appid": "wxd678efh567hg6787",
        "mchid": "1230000109",
        "out_trade_no": "OT20261126000000000001",
        "transaction_id": "4200000000202611260000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-11-26T10:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"},
    },
    ensure_ascii=False,
    separators=(",", ":"),
).encode("utf-8")

ciphertext = AESGCM(key).encrypt(nonce, plaintext, associated_data)
vector = {
    "source": "Python cryptography AESGCM (scripts/make-aead-vector.py)",
    "algorithm": "AEAD_AES_256_GCM",
    "apiv3_key": key.decode(),
    "nonce": nonce.decode(),
    "associated_data": associated_data.decode(),
    "plaintext": plaintext.decode("utf-8"),
    "ciphertext": base64.b64encode(ciphertext).decode(),
}
out = pathlib.Path(__file__).resolve().parent.parent / "testdata" / "wechatpay-aead-vector.json"
out.write_text(json.dumps(vector, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
print(out)
