/* auth_key.h: machine API keys, `lok_<prefix>.<secret>`.
 *
 * The prefix (12 lower-case base32 characters) is public: it is what we store in clear, index,
 * log and show in listings. The secret (43 base64url characters, 256 random bits) is shown once
 * when the key is created and never stored: the database keeps HMAC-SHA256(pepper, secret) as
 * hex, where the pepper is a server-side secret that is not in the database either. Verification
 * recomputes the HMAC and compares in constant time.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define AUTH_KEY_SCHEME     "lok_"
#define AUTH_KEY_PREFIX_LEN 12
#define AUTH_KEY_SECRET_LEN 43
#define AUTH_KEY_TOKEN_LEN  (4 + AUTH_KEY_PREFIX_LEN + 1 + AUTH_KEY_SECRET_LEN)
#define AUTH_KEY_HASH_HEX   64

/**
 * Splits a token into prefix and secret, checking the scheme, lengths and alphabets exactly (the
 * secret must be canonical base64url: its last character's two spare bits are zero).
 * @ret_prefix needs AUTH_KEY_PREFIX_LEN+1 bytes, @ret_secret AUTH_KEY_SECRET_LEN+1.
 * 0 or -EINVAL.
 */
int auth_key_parse(const char *token, size_t len, char *ret_prefix, char *ret_secret);

/** Makes a new random key (getrandom): the whole token (AUTH_KEY_TOKEN_LEN+1 bytes) and its
 *  prefix (AUTH_KEY_PREFIX_LEN+1 bytes). 0 or -errno. */
int auth_key_generate(char *ret_token, char *ret_prefix);

/** HMAC-SHA256(@pepper, @secret) as 64 lower-case hex characters + NUL into @ret_hex.
 *  0, -EINVAL for an empty pepper, or -EIO. */
int auth_key_hash(const void *pepper, size_t pepper_len, const char *secret,
                  char ret_hex[AUTH_KEY_HASH_HEX + 1]);

/** Recomputes the hash of @secret and compares it with @stored_hex in constant time. False
 *  also when the pepper is empty or @stored_hex is not 64 characters. */
bool auth_key_verify(const void *pepper, size_t pepper_len, const char *secret,
                     const char *stored_hex);

/** Parses an `Authorization` header value "Bearer <token>" (scheme case-insensitive, one or more
 *  spaces, an RFC 6750 b64token, nothing after it), returning a pointer into @header and the
 *  token length. 0 or -EINVAL. */
int auth_bearer_token(const char *header, const char **ret_token, size_t *ret_len);
