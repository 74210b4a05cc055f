#include <stdio.h>
int main(void) { puts("@@SLAT {\"event\":\"error\",\"msg\":\"not implemented yet\"}"); return 1; }
