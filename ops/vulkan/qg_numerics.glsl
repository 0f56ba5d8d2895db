/*
 * qg_numerics.glsl - floating-point helpers whose results do not depend on
 * the Vulkan implementation (included by qg_common.glsl).
 *
 * Why: the Vulkan environment for SPIR-V guarantees correct rounding only
 * for f32 add, subtract and multiply (and exact conversions to wider
 * types).  Division may be off by 2.5 ulp, sqrt inherits inversesqrt's 2
 * ulp plus a reciprocal, exp is allowed 3 + 2|x| ulp, fma may or may not be
 * fused, conversions to 16-bit floats round in an implementation-defined
 * mode, and 16-bit denormals may be flushed to zero on input.  NVIDIA's
 * drivers use the fast hardware approximations (MUFU) for all of these.
 * The CPU executor (the graph's other executor, and the one the GPU must
 * agree with token for token) rounds every one of these correctly, so:
 *
 *   qg_f32_to_f16   f32 -> f16 bits, round to nearest even, in integer
 *                   arithmetic: bit-identical to qg_f32_to_f16 of
 *                   graph/qg_base.c for every input (subnormals, overflow
 *                   to Inf, NaN -> quiet NaN 0x7e00 with the sign).
 *   qg_f16_to_f32   f16 bits -> f32, exact for every input; subnormals are
 *                   decoded in integer arithmetic, never flushed.
 *   qg_unpack_f16x2 unpackHalf2x16 with the subnormal lanes decoded exactly
 *                   (normal, Inf and NaN halves widen exactly everywhere).
 *   qg_div_rn       a / b correctly rounded (nearest even) for normal
 *                   operands with a normal result, by integer long division;
 *                   other cases (zero, Inf, NaN, denormal operand or
 *                   result) fall back to a / b.
 *   qg_sqrt_rn      sqrt(x) correctly rounded for normal x > 0 (integer
 *                   digit-by-digit root); other x fall back to sqrt(x).
 *   qg_exp          exp(x): Cody-Waite reduction by ln 2 with a 9-bit first
 *                   constant (so k * C1 and x - k * C1 are exact), the
 *                   Cephes single-precision polynomial, `precise` (no
 *                   contraction), exact scaling by 2^k.  x is clamped to
 *                   [-87, 88] like the CPU's vector exp.  Error <= 2 ulp
 *                   over the range (the polynomial's 1 ulp plus the
 *                   unfused reduction), independent of |x|: the CPU's
 *                   expf / exp8 are within 1 / 2 ulp, so the two executors
 *                   differ by at most 3 ulp per exp.
 * These cost tens of integer operations; they are used once per
 * workgroup (norm scales, softmax sums) or once per output row (silu),
 * never in a dot product's inner loop.
 */

uint qg_f32_to_f16(float f) {
    const uint x = floatBitsToUint(f);
    const uint sign = (x >> 16) & 0x8000u;
    const uint ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* rounds past 65504 */
    if (ax < 0x38800000u) {
        /* f16 subnormal or zero: round |f| / 2^-24 to an integer, nearest
         * even; below 2^-25 (exponent field < 102) everything rounds to 0 */
        const uint e = ax >> 23;
        if (e < 102u) return sign;
        const uint m = (ax & 0x7fffffu) | 0x800000u; /* |f| = m 2^(e-150) */
        const uint shift = 126u - e;                 /* in [14, 24] */
        uint h = m >> shift;
        const uint rem = m & ((1u << shift) - 1u), half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (h & 1u) != 0u)) h++;
        return sign | h; /* h may reach 0x400: the smallest normal, correctly */
    }
    uint h = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu);
    const uint rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h++;
    return sign | h; /* a carry into the exponent is the right rounding */
}

float qg_f16_to_f32(uint h) {
    const uint sign = (h & 0x8000u) << 16, a = h & 0x7fffu;
    uint bits;
    if (a >= 0x7c00u) {
        bits = 0x7f800000u | ((a & 0x3ffu) << 13);
    } else if (a >= 0x400u) {
        bits = (a << 13) + 0x38000000u;
    } else if (a == 0u) {
        bits = 0u;
    } else { /* subnormal: a 2^-24 = (a << s) 2^(-24-s), normalized */
        const uint s = 10u - uint(findMSB(a));
        bits = ((113u - s) << 23) | (((a << s) & 0x3ffu) << 13);
    }
    return uintBitsToFloat(sign | bits);
}

vec2 qg_unpack_f16x2(uint w) {
    vec2 v = unpackHalf2x16(w);
    if ((w & 0x7c00u) == 0u) v.x = qg_f16_to_f32(w & 0xffffu);
    if ((w & 0x7c000000u) == 0u) v.y = qg_f16_to_f32(w >> 16);
    return v;
}

float qg_div_rn(float a, float b) {
    const uint ua = floatBitsToUint(a), ub = floatBitsToUint(b);
    const int ea = int((ua >> 23) & 0xffu), eb = int((ub >> 23) & 0xffu);
    if (ea == 0 || ea == 255 || eb == 0 || eb == 255) return a / b;
    uint ma = (ua & 0x7fffffu) | 0x800000u;
    const uint mb = (ub & 0x7fffffu) | 0x800000u;
    int e = ea - eb + 127;
    if (ma < mb) { /* quotient mantissa in [1, 2) */
        ma <<= 1;
        e--;
    }
    /* 24 quotient bits; r < 2 mb < 2^25 throughout */
    uint q = 0u, r = ma;
    for (uint i = 0u; i < 24u; i++) {
        q <<= 1;
        if (r >= mb) {
            r -= mb;
            q |= 1u;
        }
        r <<= 1;
    }
    /* r = 2 * remainder: compare with the divisor for the half bit */
    if (r > mb || (r == mb && (q & 1u) != 0u)) q++;
    if (q == 0x1000000u) {
        q = 0x800000u;
        e++;
    }
    if (e <= 0 || e >= 255) return a / b;
    return uintBitsToFloat(((ua ^ ub) & 0x80000000u) | (uint(e) << 23) | (q & 0x7fffffu));
}

float qg_sqrt_rn(float x) {
    const uint ux = floatBitsToUint(x);
    const int ex = int(ux >> 23); /* sign bit included: negative x fails below */
    if (ex == 0 || ex >= 255) return sqrt(x);
    /* x = M 2^(E-23), M in [2^23, 2^24); make E even: M' = M << (E & 1) */
    const int E = ex - 127;
    const uint Mp = ((ux & 0x7fffffu) | 0x800000u) << uint(E & 1);
    const int e2 = E - (E & 1);
    /* R = floor(sqrt(M' 2^25)), 25 bits: the 24-bit mantissa of
     * sqrt(M' 2^-23) and a round bit.  The operand's 25 bit pairs come
     * from M' (bit i of the operand is bit i - 25 of M'). */
    uint root = 0u, rem = 0u;
    for (int i = 24; i >= 0; i--) {
        const int sh = 2 * i - 25;
        const uint two = sh >= 0 ? (Mp >> uint(sh)) & 3u : (sh == -1 ? (Mp << 1) & 2u : 0u);
        rem = (rem << 2) | two;
        const uint trial = (root << 2) | 1u;
        if (rem >= trial) {
            rem -= trial;
            root = (root << 1) | 1u;
        } else {
            root <<= 1;
        }
    }
    /* no exact ties: the round bit alone decides */
    uint q = (root >> 1) + (root & 1u);
    int e = e2 / 2 + 127;
    if (q == 0x1000000u) {
        q = 0x800000u;
        e++;
    }
    return uintBitsToFloat((uint(e) << 23) | (q & 0x7fffffu));
}

float qg_exp(float x) {
    precise float xc = clamp(x, -87.0, 88.0);
    precise float k = roundEven(xc * 1.44269504088896341);
    precise float r = xc - k * 0.693359375;  /* k * C1 exact, difference exact */
    r = r - k * -2.12194440e-4;
    precise float z = r * r;
    precise float p = 1.9875691500e-4;
    p = p * r + 1.3981999507e-3;
    p = p * r + 8.3334519073e-3;
    p = p * r + 4.1665795894e-2;
    p = p * r + 1.6666665459e-1;
    p = p * r + 5.0000001201e-1;
    precise float y = p * z + r + 1.0;
    return y * uintBitsToFloat(uint(int(k) + 127) << 23);
}
