/* auth_password.h: people's passwords, hashed with argon2id (RFC 9106) into PHC strings.
 *
 * A hash is stored as `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>` (standard
 * base64 without padding), so each stored hash carries its own parameters and can be checked
 * after the defaults change; auth_password_needs_rehash() tells a login handler when to store a
 * fresh hash. The defaults are OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
 */
#pragma once

#include <stdint.h>

#define AUTH_PASSWORD_MAX_LEN   1024 /* bytes; longer passwords are refused with -E2BIG */
#define AUTH_PASSWORD_SALT_LEN  16
#define AUTH_PASSWORD_HASH_LEN  32
#define AUTH_PASSWORD_M_KIB_MIN 19456
#define AUTH_PASSWORD_T_MIN     2
/* Upper bounds, enforced on hashing and on verification: a stored hash is data, and one with a
 * huge m or t would let whoever can write it make every login allocate gigabytes or spin. */
#define AUTH_PASSWORD_M_KIB_MAX (256u * 1024u)
#define AUTH_PASSWORD_T_MAX     16
#define AUTH_PASSWORD_P_MAX     8

typedef struct auth_password_params {
    uint32_t m_kib; /* memory in KiB */
    uint32_t t;     /* passes */
    uint32_t p;     /* lanes */
} auth_password_params_t;

#define AUTH_PASSWORD_PARAMS_DEFAULT \
    ((auth_password_params_t){.m_kib = AUTH_PASSWORD_M_KIB_MIN, .t = AUTH_PASSWORD_T_MIN, .p = 1})

/**
 * Hashes @password (NUL-terminated, 1..AUTH_PASSWORD_MAX_LEN bytes) with a fresh 16-byte salt
 * from getrandom. @params NULL means AUTH_PASSWORD_PARAMS_DEFAULT; parameters below the
 * defaults or above the caps are refused. On success *@ret_phc is a malloc'd PHC string the
 * caller frees. 0, -EINVAL (bad parameters or empty password), -E2BIG (password too long),
 * -ENOMEM, or -errno from getrandom.
 */
int auth_password_hash(const auth_password_params_t *params, const char *password, char **ret_phc);

/**
 * Checks @password against the stored @phc in constant time. Only argon2id v=19 strings with
 * parameters within the caps above are accepted. 0 on a match, -EACCES on a mismatch (also for
 * an empty or over-long password), -EINVAL for a malformed or refused @phc, -ENOMEM.
 */
int auth_password_verify(const char *phc, const char *password);

/**
 * Whether @phc was made with other parameters than @params (NULL: the defaults) or another
 * salt/hash length: 1 if it should be replaced by a new hash after a successful verification,
 * 0 if not, -EINVAL if @phc is malformed.
 */
int auth_password_needs_rehash(const char *phc, const auth_password_params_t *params);
