/* svc_private.h: helpers shared by the files of libs/svc, not part of its interface. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/**
 * Appends @src (@len bytes) to @dst at *@pos as the inside of a JSON string: quotes, backslashes
 * and control characters are escaped, and every byte that is not part of valid UTF-8 becomes
 * \ufffd, so the output is valid JSON whatever the input. Stops before a character whose escaped
 * form would not fit below @cap, and returns false when it stopped early. Writes no NUL.
 */
bool svc_json_escape(char *dst, size_t cap, size_t *pos, const char *src, size_t len);
