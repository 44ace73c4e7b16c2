#include "engine/stop_strings.h"

#include <gtest/gtest.h>

namespace skim {
namespace {

// Feeds the pieces; returns what was released, flushed at the end unless stopped.
std::string stream(StopStrings& s, std::initializer_list<std::string_view> pieces) {
  std::string out;
  for (std::string_view p : pieces) out += s.push(p);
  if (!s.stopped()) out += s.flush();
  return out;
}

TEST(StopStrings, TextWithoutStopsPassesThrough) {
  StopStrings s({});
  EXPECT_EQ(s.push("hello "), "hello ");
  EXPECT_EQ(s.push("world"), "world");
  EXPECT_FALSE(s.stopped());
}

TEST(StopStrings, EndsBeforeAStopSplitAcrossPieces) {
  StopStrings s({"</end>"});
  EXPECT_EQ(s.push("answer </e"), "answer ");  // "</e" might begin the stop string
  EXPECT_EQ(s.push("nd> more"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("ignored"), "");
}

TEST(StopStrings, ReleasesAHeldTailThatDidNotBecomeAStop) {
  StopStrings s({"STOP"});
  EXPECT_EQ(s.push("ST"), "");
  EXPECT_EQ(s.push("ART"), "START");
  EXPECT_EQ(stream(s, {"ing ST"}), "ing ST");
  EXPECT_FALSE(s.stopped());
}

TEST(StopStrings, TheEarliestOfSeveralStopsWins) {
  StopStrings s({"world", "lo w"});
  EXPECT_EQ(stream(s, {"hello world"}), "hel");
  EXPECT_TRUE(s.stopped());
}

TEST(StopStrings, HoldsOnlyWhatAStopCanStartWith) {
  StopStrings s({"\n\n", "User:"});
  EXPECT_EQ(s.push("a\n"), "a");
  EXPECT_EQ(s.push("b Us"), "\nb ");
  EXPECT_EQ(s.push("ual"), "Usual");
  EXPECT_EQ(s.push("\n\nUser:"), "");
  EXPECT_TRUE(s.stopped());
}

TEST(StopStrings, MultiByteCharactersAreNeverSplit) {
  StopStrings s({"é!"});
  EXPECT_EQ(s.push("caf\xc3\xa9"), "caf");  // "é" might begin "é!"
  EXPECT_EQ(s.push("?"), "\xc3\xa9?");
}

}  // namespace
}  // namespace skim
