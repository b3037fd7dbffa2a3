/* contract-check: reads one JSON document per line on stdin and prints one verdict per line:
 * 1 valid, 0 invalid (including text jansson refuses with the gateway's decode flags), E when a
 * valid reading's canonical dump does not itself validate (a bug). Used by
 * test_schema_referee.py to compare the C validator with the JSON Schema. */
#include <stdio.h>
#include <stdlib.h>

#include "contract.h"

static char verdict(const char *line, size_t len)
{
    contract_reading_t reading;
    json_t *doc = NULL, *again = NULL;
    char *dump = NULL, v = '0';

    doc = json_loadb(line, len, CONTRACT_JSON_DECODE_FLAGS, NULL);
    if (!doc || contract_reading_validate(doc, &reading, NULL) < 0)
        goto out;
    v = 'E';
    dump = contract_reading_dump(&reading);
    again = dump ? json_loads(dump, CONTRACT_JSON_DECODE_FLAGS, NULL) : NULL;
    if (again && contract_reading_validate(again, NULL, NULL) == 0)
        v = '1';
out:
    json_decref(again);
    free(dump);
    json_decref(doc);
    return v;
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            n--;
        putchar(verdict(line, (size_t)n));
        putchar('\n');
    }
    free(line);
    return fflush(stdout) == 0 ? 0 : 1;
}
