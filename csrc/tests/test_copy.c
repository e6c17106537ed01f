/* ahr_copy_stream: byte-identical to memcpy at every destination alignment and at the sizes
 * around the streaming loop's edges; nothing written outside the target. */
#include "harness.h" /* first: it defines _GNU_SOURCE */

#define GUARD 64
#define SPAN ((1u << 20) + 64)

static unsigned char src[SPAN + 64];
static unsigned char dst[SPAN + 2 * GUARD + 64];
static unsigned char want[SPAN + 2 * GUARD + 64];

static void fill_pattern(void)
{
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 131u + (i >> 9));
}

static void reset(void)
{
    memset(dst, 0xA5, sizeof dst);
    memset(want, 0xA5, sizeof want);
}

static void test_single(void)
{
    const uint64_t sizes[] = {0, 1, 15, 16, 63, 64, 65, 79, 80, 127, 4096 + 13, (1u << 20) + 7};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (unsigned da = 0; da < 16; da++)
            for (unsigned sa = 0; sa < 3; sa++) {
                reset();
                ahr_copy_stream(dst + GUARD + da, src + sa, sizes[k]);
                memcpy(want + GUARD + da, src + sa, sizes[k]);
                CHECK(memcmp(dst, want, sizeof dst) == 0);
            }
}

int main(void)
{
    fill_pattern();
    test_single();
    return 0;
}
