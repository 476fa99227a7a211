// Strict integer parsing: the whole text or nothing.
#include <gtest/gtest.h>

#include "util/parse.h"

using hd::parse_int;

TEST(ParseInt, AcceptsWholeIntegersOnly) {
  EXPECT_EQ(parse_int("0"), 0);
  EXPECT_EQ(parse_int("42"), 42);
  EXPECT_EQ(parse_int("-7"), -7);
  EXPECT_EQ(parse_int("+3"), 3);
  EXPECT_EQ(parse_int("9223372036854775807"), INT64_MAX);
  for (const char* bad : {"", " ", "4x", "x4", "1.5", "1e3", "0x10", "9223372036854775808", "--1", "3 "})
    EXPECT_FALSE(parse_int(bad).has_value()) << "'" << bad << "'";
}
