/**
 * The rules for client names, channel names and message ids (`PROTOCOL.md` section 8), and
 * the making of message ids.
 *
 * @module
 */

import { NameError } from "./errors.js";

/** Longest client name, channel name or message id, in bytes of UTF-8. */
export const MAX_NAME_LEN = 256;

/** Length of the ids made by {@link newMessageId}. */
export const MESSAGE_ID_LEN = 21;

/** Unicode general category Cc, or the White_Space property. */
const BAD_CHARACTER = /[\p{Cc}\p{White_Space}]/u;

/** Only printable ASCII but space: the usual name, checked without the regex. */
function printableAscii(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) {
      return false;
    }
  }
  return true;
}

/** Bytes `s` takes in UTF-8 (a lone surrogate counts as the 3 bytes of U+FFFD). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      n += 1;
    } else if (c < 0x800) {
      n += 2;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        n += 4;
        i++;
      } else {
        n += 3;
      }
    } else {
      n += 3;
    }
  }
  return n;
}

function check(kind: string, name: unknown): string {
  if (typeof name !== "string") {
    throw new NameError("BadCharacter", kind, `${kind} must be a string, not ${typeof name}`);
  }
  if (name.length === 0) {
    throw new NameError("Empty", kind, `${kind} must not be empty`);
  }
  const ascii = printableAscii(name);
  const len = ascii ? name.length : utf8Length(name);
  if (len > MAX_NAME_LEN) {
    throw new NameError("TooLong", kind, `${kind} is ${len} bytes long, the limit is ${MAX_NAME_LEN}`);
  }
  if (ascii) {
    return name;
  }
  if (BAD_CHARACTER.test(name)) {
    throw new NameError(
      "BadCharacter",
      kind,
      `${kind} ${JSON.stringify(name)} holds a control character or white space`,
    );
  }
  return name;
}

/**
 * Checks a client name: 1 to 256 bytes of UTF-8, no control character or white space, not
 * starting with `$` (names starting with `$` belong to the broker).
 *
 * @throws {@link NameError} saying what is wrong.
 */
export function validateClientName(name: string): void {
  check("client name", name);
  if (name.startsWith("$")) {
    throw new NameError(
      "Reserved",
      "client name",
      `client name ${JSON.stringify(name)} starts with '$', which is reserved for the broker`,
    );
  }
}

/**
 * Checks a channel name: 1 to 256 bytes of UTF-8, no control character or white space.
 *
 * @throws {@link NameError} saying what is wrong.
 */
export function validateChannel(name: string): void {
  check("channel", name);
}

/**
 * Checks a message id: 1 to 256 bytes of UTF-8, no control character or white space.
 *
 * @throws {@link NameError} saying what is wrong.
 */
export function validateId(id: string): void {
  check("message id", id);
}

/** nanoid's URL-safe alphabet: 64 characters, so that six random bits pick one. */
const ALPHABET = "useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";

/** Random bytes drawn at once, for many ids. */
const POOL_SIZE = MESSAGE_ID_LEN * 128;
const pool = new Uint8Array(POOL_SIZE);
let poolPos = POOL_SIZE;

/**
 * Makes a new message id: 21 characters of `A-Z a-z 0-9 _ -` (126 random bits, from the
 * platform's cryptographic generator), the shape of a nanoid.
 */
export function newMessageId(): string {
  if (poolPos + MESSAGE_ID_LEN > POOL_SIZE) {
    globalThis.crypto.getRandomValues(pool);
    poolPos = 0;
  }
  let id = "";
  for (let i = 0; i < MESSAGE_ID_LEN; i++) {
    id += ALPHABET[(pool[poolPos + i] as number) & 63];
  }
  poolPos += MESSAGE_ID_LEN;
  return id;
}
